"""The V2 REST binary tensor data extension on `/v2/models/{name}/infer`: `tritonclient.http`
(binary by default) gets the answers JSON tensors get; malformed binary bodies are 400s."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http.aio as triton_http
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException


def _tensor(name: str, datatype: str, array: np.ndarray, *, binary: bool = True) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _text(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object)


@pytest.fixture
async def triton(gateway):
    url, _ = gateway
    client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    yield client
    await client.close()


async def _json_outputs(http, model: str, body: dict) -> dict[str, dict]:
    reply = await http.post(f"/v2/models/{model}/infer", json=body)
    assert reply.status_code == 200, reply.text
    return {o["name"]: o for o in reply.json()["outputs"]}


async def test_binary_text_input_and_binary_output_match_json(http, triton):
    texts = ["good", "bad movie", "ünïcode"]
    want = await _json_outputs(
        http,
        "sentiment",
        {"inputs": [{"name": "input-0", "shape": [3], "datatype": "BYTES", "data": texts}]},
    )
    result = await triton.infer("sentiment", [_tensor("input-0", "BYTES", _text(texts))])
    output = result.get_output("output-0")
    assert output["parameters"]["binary_data_size"] == 3 * 8 and "data" not in output
    assert result.as_numpy("output-0").tolist() == want["output-0"]["data"]


async def test_mixed_json_and_binary_inputs_per_output_choice(http, triton):
    ids = np.array([[2, 50, 3]], dtype=np.int64)
    mask = np.ones_like(ids)
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": ids.tolist()},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
        ]
    }
    want = await _json_outputs(http, "sentiment", body)
    inputs = [
        _tensor("input_ids", "INT64", ids),
        _tensor("attention_mask", "INT64", mask, binary=False),
    ]
    as_json = await triton.infer(
        "sentiment", inputs, outputs=[InferRequestedOutput("logits", binary_data=False)]
    )
    assert as_json.get_output("logits")["data"] == want["logits"]["data"]
    as_raw = await triton.infer(
        "sentiment", inputs, outputs=[InferRequestedOutput("logits", binary_data=True)]
    )
    np.testing.assert_array_equal(
        as_raw.as_numpy("logits").ravel(), np.array(want["logits"]["data"], dtype=np.float32)
    )


async def test_generation_with_binary_tensors(http, triton):
    sampling = json.dumps({"max_tokens": 2})
    want = await _json_outputs(
        http,
        "llm",
        {
            "inputs": [
                {"name": "input_ids", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
                {
                    "name": "sampling_parameters",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [sampling],
                },
            ]
        },
    )
    result = await triton.infer(
        "llm",
        [
            _tensor("input_ids", "INT64", np.array([1, 2, 3], dtype=np.int64)),
            _tensor("sampling_parameters", "BYTES", _text([sampling])),
        ],
    )
    assert result.as_numpy("output_ids").tolist() == want["output_ids"]["data"]
    assert [v.decode() for v in result.as_numpy("finish_reason")] == want["finish_reason"]["data"]
    assert [v.decode() for v in result.as_numpy("text_output")] == want["text_output"]["data"]


async def test_binary_response_wire_format(http):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + struct.pack("<I", 4) + b"good"
    reply = await http.post(
        "/v2/models/sentiment/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.content[:length])
    (output,) = answer["outputs"]
    assert output["parameters"] == {"binary_data_size": 8} and "data" not in output
    assert len(reply.content) == length + 8
    assert output["datatype"] == "INT64" and output["shape"] == [1]


def _binary_body(size: int, payload: bytes, *, shape=(1,), data=None) -> tuple[bytes, int]:
    tensor = {"name": "ids", "shape": list(shape), "datatype": "INT64"}
    tensor["parameters"] = {"binary_data_size": size}
    if data is not None:
        tensor["data"] = data
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + payload, len(header)


@pytest.mark.parametrize(
    ("size", "payload", "shape", "data", "header", "message"),
    [
        (8, b"\0" * 8, (1,), None, "x", "is not an integer"),
        (8, b"\0" * 8, (1,), None, "100000", "does not fit a body"),
        (8, b"\0" * 8, (1,), None, "-1", "does not fit a body"),
        (16, b"\0" * 8, (1,), None, None, "add up to 16 bytes, but 8"),
        (8, b"\0" * 16, (1,), None, None, "add up to 8 bytes, but 16"),
        (8, b"\0" * 8, (2,), None, None, "tensor 'ids': INT64 shape [2] needs 16 raw bytes"),
        (8, b"\0" * 8, (1,), [1], None, "'data' must be absent"),
        (-8, b"", (1,), None, None, "binary_data_size must be a non-negative integer"),
        ("8", b"\0" * 8, (1,), None, None, "binary_data_size must be a non-negative integer"),
    ],
)
async def test_malformed_binary_bodies_are_400(http, size, payload, shape, data, header, message):
    body, length = _binary_body(size, payload, shape=shape, data=data)
    reply = await http.post(
        "/v2/models/sentiment/infer",
        content=body,
        headers={"Inference-Header-Content-Length": header if header else str(length)},
    )
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


async def test_binary_input_without_the_header_is_400(http):
    body, _ = _binary_body(8, b"")
    reply = await http.post("/v2/models/sentiment/infer", content=body)
    assert reply.status_code == 400
    assert "Inference-Header-Content-Length header missing" in reply.json()["error"]
    no_data = await http.post(
        "/v2/models/sentiment/infer",
        json={"inputs": [{"name": "ids", "shape": [1], "datatype": "INT64"}]},
    )
    assert no_data.status_code == 400 and "tensor 'ids': no 'data'" in no_data.json()["error"]


async def test_truncated_binary_bytes_element_is_400(triton):
    bad = InferInput("input-0", [1], "BYTES")
    bad._raw_data = struct.pack("<I", 10) + b"abc"
    bad._parameters["binary_data_size"] = len(bad._raw_data)
    with pytest.raises(InferenceServerException) as error:
        await triton.infer("sentiment", [bad])
    assert "tensor 'input-0'" in str(error.value) and "claims 10 bytes" in str(error.value)
