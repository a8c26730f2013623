"""KServe V1/V2 REST with the clients users have, unmodified, for every task: `tritonclient.http`
with binary inputs and outputs, and the `kserve` SDK's `InferenceRESTClient` (V1 and V2), get
the answers JSON tensors get from the same mesh.

The `kserve` SDK runs in its own virtual environment (`KSERVE_SDK_PYTHON`, default
`~/.cache/hfmesh/venvs/kserve-sdk/bin/python`): installing it beside the project would move pinned
packages (docs/protocol.md says how to make that environment).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.http import InferInput

from tests.helpers.mesh import model_entry, running_mesh

pytestmark = pytest.mark.slow  # a multi-process mesh

SAMPLING = json.dumps({"max_tokens": 8, "temperature": 0})

# mesh name → (model folder, task, V2 inputs as (name, datatype, shape, data), V1 instances)
TASKS = {
    "llm": (
        "tiny-llama",
        "text_generation",
        [
            ("text_input", "BYTES", [1], ["The quick brown fox"]),
            ("sampling_parameters", "BYTES", [1], [SAMPLING]),
        ],
        ["The quick brown fox"],
    ),
    "t5": (
        "tiny-t5",
        "text2text_generation",
        [
            ("text_input", "BYTES", [1], ["translate: the cat"]),
            ("sampling_parameters", "BYTES", [1], [SAMPLING]),
        ],
        ["translate: the cat"],
    ),
    "embed": (
        "all-minilm-l6-v2",
        "text_embedding",
        [("input-0", "BYTES", [2], ["A man is eating food.", "The stock market fell."])],
        ["A man is eating food.", "The stock market fell."],
    ),
    "fill": (
        "tiny-bert-fill-mask",
        "fill_mask",
        [("input-0", "BYTES", [2], ["the cat [MASK] on the mat", "paris is in [MASK]"])],
        ["the cat [MASK] on the mat", "paris is in [MASK]"],
    ),
    "sentiment": (
        "tiny-bert-sentiment",
        "sequence_classification",
        [("input-0", "BYTES", [3], ["I loved it", "worst day ever", "ünïcode ok"])],
        ["I loved it", "worst day ever", "ünïcode ok"],
    ),
    "ner": (
        "tiny-bert-ner",
        "token_classification",
        [("input-0", "BYTES", [2], ["Alice lives in Paris", "Bob"])],
        ["Alice lives in Paris", "Bob"],
    ),
    "rerank": (
        "tiny-bert-reranker",
        "rerank",
        [
            ("query", "BYTES", [1], ["capital of France"]),
            ("documents", "BYTES", [2], ["Paris is the capital.", "Bananas are yellow."]),
        ],
        [["capital of France", "Paris is the capital."], ["capital of France", "Bananas."]],
    ),
}

# The tensor path of an encoder, as a Triton-hosted BERT is called: INT64 in, FP32 logits out.
TENSOR_CASE = [
    ("input_ids", "INT64", [1, 4], [[2, 40, 41, 3]]),
    ("attention_mask", "INT64", [1, 4], [[1, 1, 1, 1]]),
]


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    models = [
        model_entry(name, model_path(folder), task, max_model_len=256)
        for name, (folder, task, _, _) in TASKS.items()
    ]
    with running_mesh(models, tmp_path_factory.mktemp("mesh")) as started:
        yield started["gateway"]


@pytest.fixture(scope="module")
def http(mesh):
    with httpx.Client(base_url=mesh.url, timeout=120) as client:
        yield client


def _cases() -> list[tuple[str, list]]:
    return [(name, spec[2]) for name, spec in TASKS.items()] + [("sentiment", TENSOR_CASE)]


def _json_infer(http: httpx.Client, model: str, inputs: list) -> dict[str, dict]:
    body = {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs]}
    reply = http.post(f"/v2/models/{model}/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert "inference-header-content-length" not in reply.headers
    return {o["name"]: o for o in reply.json()["outputs"]}


def _array(datatype: str, shape: list[int], data: list) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([v.encode() for v in data], dtype=object).reshape(shape)
    return np.array(data, dtype=np.int64).reshape(shape)


def _same(name: str, got: np.ndarray, want: dict) -> None:
    assert list(got.shape) == want["shape"], name
    flat = got.ravel()
    if want["datatype"] == "BYTES":
        assert [bytes(v).decode() for v in flat] == want["data"], name
    elif want["datatype"] == "FP32":
        np.testing.assert_array_equal(flat, np.array(want["data"], dtype=np.float32), name)
    else:
        assert flat.tolist() == want["data"], name


@pytest.mark.parametrize(("model", "inputs"), _cases(), ids=[f"{m}-{len(i)}" for m, i in _cases()])
def test_tritonclient_http_binary_equals_json(mesh, http, model, inputs):
    want = _json_infer(http, model, inputs)
    client = triton_http.InferenceServerClient(mesh.url.removeprefix("http://"))
    try:
        tensors = []
        for name, datatype, shape, data in inputs:
            tensor = InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(_array(datatype, shape, data))  # binary by default
            tensors.append(tensor)
        result = client.infer(model, tensors)  # no outputs named: every output binary
    finally:
        client.close()
    answer = result.get_response()
    assert {o["name"] for o in answer["outputs"]} == set(want)
    for output in answer["outputs"]:
        assert "binary_data_size" in output["parameters"] and "data" not in output
        _same(output["name"], result.as_numpy(output["name"]), want[output["name"]])


def _kserve_python() -> str:
    default = Path.home() / ".cache/hfmesh/venvs/kserve-sdk/bin/python"
    python = os.environ.get("KSERVE_SDK_PYTHON", str(default))
    if not Path(python).exists():
        pytest.skip(f"no kserve SDK environment at {python} (docs/protocol.md: make one)")
    return python


def test_kserve_sdk_v1_and_v2_equal_json(mesh, http):
    cases = [
        {
            "model": model,
            "protocol": "v2",
            "inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs],
        }
        for model, inputs in _cases()
    ] + [{"model": name, "protocol": "v1", "instances": spec[3]} for name, spec in TASKS.items()]
    script = Path(__file__).parents[1] / "helpers" / "kserve_sdk_client.py"
    run = subprocess.run(
        [_kserve_python(), str(script)],
        input=json.dumps({"url": mesh.url, "cases": cases}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["live"] == {"v1": True, "v2": True} and reply["ready"] is True
    for case, answer in zip(cases, reply["answers"], strict=True):
        assert "error" not in answer, (case["model"], answer.get("trace"))
        assert answer.pop("ready") is True
        if case["protocol"] == "v1":
            want = http.post(
                f"/v1/models/{case['model']}:predict", json={"instances": case["instances"]}
            )
            assert want.status_code == 200, want.text
            assert answer == want.json(), case["model"]
            continue
        inputs = [(i["name"], i["datatype"], i["shape"], i["data"]) for i in case["inputs"]]
        want_v2 = _json_infer(http, case["model"], inputs)
        assert set(answer) == set(want_v2), case["model"]
        for name, got in answer.items():
            assert (
                got["shape"] == want_v2[name]["shape"]
                and got["datatype"] == want_v2[name]["datatype"]
            ), (case["model"], name)
            if got["datatype"] == "FP32":
                np.testing.assert_array_equal(
                    np.array(got["data"], dtype=np.float32),
                    np.array(want_v2[name]["data"], dtype=np.float32),
                )
            else:
                assert got["data"] == want_v2[name]["data"], (case["model"], name)
