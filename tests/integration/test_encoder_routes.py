"""Every encoder task answers the same three ways, on real engines, tokenizer and gateways:
through the gateway's default route (text straight to the HF engine), through a gateway with
`--encoder_route split` (tokenizer preprocess → engine tensors → tokenizer postprocess) and
from the engine called directly with `tritonclient` (text in, `output-0` out).

Requests go one at a time, so each engine forward pass holds one request's rows and nothing
else. Then every result is identical (labels, decoded tokens, classification and rerank
floats bit for bit, token counts), except the embeddings of the split route: its engine gets
token tensors and runs the padded forward pass, while text runs packed (no padding tokens,
`services.engine_hf.packing`); the two agree within 1e-5, which is what the engine and the
mesh already differed by before text went straight to the engine.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from services.common import task_results
from services.launcher.processes import start_service
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.triton import bytes_input, clients

pytestmark = pytest.mark.slow  # a multi-process mesh with five real models

ENGINES = {
    "embed": ("all-minilm-l6-v2", "text_embedding"),
    "fill": ("tiny-bert-fill-mask", "fill_mask"),
    "ner": ("tiny-bert-ner", "token_classification"),
    "sentiment": ("tiny-bert-sentiment", "sequence_classification"),
    "rerank": ("tiny-bert-reranker", "rerank"),
}
TEXTS = [
    "Paris is a city in France.",
    "The weather in London was terrible today, said Maria Garcia.",
    "A man is eating food.",
    "The weather was fine and the sea was calm. " * 80,  # past 512 tokens: truncated alike
]
MASKED = ["Paris is the [MASK] of France.", "Alice went to [MASK] on [MASK]."]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def meshes(model_path, tmp_path_factory):
    models = [
        model_entry(name, model_path(folder), task) for name, (folder, task) in ENGINES.items()
    ]
    folder = tmp_path_factory.mktemp("mesh")
    with running_mesh(models, folder) as mesh:
        spec = mesh.specs["gateway"]
        split = start_service(
            spec.module,
            [*spec.args, "--encoder_route", "split"],
            name="gateway-split",
            ready="http",
            log_dir=folder,
        )
        try:
            with (
                httpx.Client(base_url=mesh["gateway"].url, timeout=120) as auto_http,
                httpx.Client(base_url=split.url, timeout=120) as split_http,
                clients({name: mesh.engine(name) for name in ENGINES}) as engines,
            ):
                yield auto_http, split_http, engines
        finally:
            split.stop()


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _both(meshes, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    auto_http, split_http, _ = meshes
    return _post(auto_http, path, body), _post(split_http, path, body)


def _engine(meshes, model: str, inputs: dict[str, list[str]], **parameters: Any) -> np.ndarray:
    engine = meshes[2][model]
    reply = engine.infer(
        model, [bytes_input(n, v) for n, v in inputs.items()], parameters=parameters or None
    )
    return reply.as_numpy("output-0")


def test_embeddings(meshes):
    auto, split = _both(meshes, "/openai/v1/embeddings", {"model": "embed", "input": TEXTS})
    assert auto["usage"] == split["usage"] and auto["usage"]["prompt_tokens"] > 0
    got = np.array([d["embedding"] for d in auto["data"]], dtype=np.float32)
    expected = np.array([d["embedding"] for d in split["data"]], dtype=np.float32)
    direct = _engine(meshes, "embed", {"input-0": TEXTS})
    np.testing.assert_array_equal(got, direct)  # the same engine text path
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # packed vs padded forward
    one, one_split = _both(meshes, "/openai/v1/embeddings", {"model": "embed", "input": TEXTS[0]})
    assert one["usage"] == one_split["usage"]


@pytest.mark.parametrize(
    "model,instances,parameters",
    [
        ("fill", MASKED, {}),
        ("fill", MASKED[:1], {"return_probabilities": True}),
        ("ner", TEXTS, {}),
        ("ner", TEXTS, {"return_raw_logits": True}),
        ("sentiment", TEXTS, {}),
        ("sentiment", TEXTS, {"return_probabilities": True}),
        ("sentiment", TEXTS, {"return_raw_logits": True}),
    ],
)
def test_v1_predictions_are_identical(meshes, model, instances, parameters):
    body = {"instances": instances, **({"parameters": parameters} if parameters else {})}
    auto, split = _both(meshes, f"/v1/models/{model}:predict", body)
    assert auto == split
    direct = _engine(meshes, model, {"input-0": instances}, **parameters)
    predictions = auto["predictions"]
    if direct.dtype == object:
        assert predictions == [v.decode() for v in direct.ravel()]
        return
    if isinstance(predictions[0], dict):  # V1 probabilities: {"class index": probability}
        predictions = [[row[str(i)] for i in range(len(row))] for row in predictions]
    np.testing.assert_array_equal(np.asarray(predictions, dtype=direct.dtype), direct)


def test_rerank_is_identical(meshes):
    body = {"model": "rerank", "query": QUERY, "documents": TEXTS}
    auto, split = _both(meshes, "/openai/v1/rerank", body)
    assert auto["results"] == split["results"] and auto["usage"] == split["usage"]
    direct = _engine(meshes, "rerank", {"query": [QUERY], "documents": TEXTS})
    by_index = {r["index"]: r["relevance_score"] for r in auto["results"]}
    # the engine answers logits; rerank's relevance_score is their sigmoid
    assert [by_index[i] for i in range(len(TEXTS))] == [
        float(task_results.sigmoid(np.float64(score))) for score in direct
    ]


def test_v2_text_infer_is_identical(meshes):
    for model, texts in (("ner", TEXTS), ("fill", MASKED), ("sentiment", TEXTS)):
        body = {
            "inputs": [
                {"name": "input-0", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
            ]
        }
        auto, split = _both(meshes, f"/v2/models/{model}/infer", body)
        assert auto["outputs"] == split["outputs"]
