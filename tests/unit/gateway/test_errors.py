"""Validation before engine work, the error envelopes, and the DESIGN.md §3 table."""

from __future__ import annotations

import pytest

from services.common.errors import PayloadTooLarge, from_grpc
from services.gateway.errors import error_body
from tests.unit.common.test_errors import TABLE


def openai_error(reply, status: int) -> str:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    return error["message"]


async def test_missing_field_is_400_not_422(http):
    message = openai_error(
        await http.post("/openai/v1/chat/completions", json={"model": "llm"}), 400
    )
    assert "messages" in message


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 2.5),
        ("top_p", 0),
        ("n", 0),
        ("max_tokens", 0),
        ("presence_penalty", -3),
        ("top_logprobs", 21),
        ("max_completion_tokens", 0),
        ("stop", ["ok", ""]),
    ],
)
async def test_parameter_ranges(http, mesh, field, value):
    before = len(mesh.engine.requests)
    body = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], field: value}
    assert field in openai_error(await http.post("/openai/v1/chat/completions", json=body), 400)
    assert len(mesh.engine.requests) == before  # rejected before any engine work


async def test_context_length_names_both_numbers_and_the_limit(http, mesh):
    before = len(mesh.engine.requests)
    reply = await http.post(
        "/openai/v1/completions", json={"model": "llm", "prompt": "hello world", "max_tokens": 60}
    )
    message = openai_error(reply, 400)
    assert "64" in message and "60" in message and "maximum context length" in message
    prompt_tokens = int(message.split("(")[1].split(" in the prompt")[0])
    assert str(prompt_tokens + 60) in message
    long_prompt = " ".join(["word"] * 200)
    assert "64" in openai_error(
        await http.post("/openai/v1/completions", json={"model": "llm", "prompt": long_prompt}), 400
    )
    assert len(mesh.engine.requests) == before


async def test_empty_prompt_unknown_model_and_task_mismatch(http):
    assert "empty" in openai_error(
        await http.post("/openai/v1/completions", json={"model": "llm", "prompt": ""}), 400
    )
    assert "empty" in openai_error(
        await http.post("/openai/v1/completions", json={"model": "llm", "prompt": []}), 400
    )
    assert "nope" in openai_error(
        await http.post("/openai/v1/completions", json={"model": "nope", "prompt": "x"}), 404
    )
    message = openai_error(
        await http.post("/openai/v1/completions", json={"model": "embed", "prompt": "x"}), 400
    )
    assert "text_embedding" in message
    message = openai_error(
        await http.post("/openai/v1/embeddings", json={"model": "llm", "input": "x"}), 400
    )
    assert "text_generation" in message


async def test_engine_rejection_is_400_even_when_streaming(http):
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"5": 1.0},
        "stream": True,
    }
    message = openai_error(await http.post("/openai/v1/chat/completions", json=body), 400)
    assert "logit_bias" in message


async def test_kserve_routes_use_the_plain_envelope(http):
    reply = await http.post("/v1/models/sentiment:predict", json={"instances": []})
    assert reply.status_code == 400 and isinstance(reply.json()["error"], str)
    reply = await http.post(
        "/v2/models/nope/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
    )
    assert reply.status_code == 404 and "nope" in reply.json()["error"]
    reply = await http.post(
        "/v2/models/sentiment/infer",
        json={"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
    )
    assert reply.status_code == 400 and "'x'" in reply.json()["error"]


async def test_malformed_json_is_400(http):
    reply = await http.post(
        "/openai/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "code,status", [(code, status) for cls, code, status in TABLE if cls is not PayloadTooLarge]
)
def test_every_table_row_reaches_http(code, status):
    error = from_grpc(code, "detail")
    assert error.http_status == status
    body = error_body(error.http_status, error.message, openai=True)
    assert body["error"]["code"] == status
    assert error_body(status, "m", openai=False) == {"error": "m"}


async def test_unavailable_carries_retry_after(http, gateway):
    _, app = gateway
    route = app.state.gateway.routes.by_name["llm"]
    saved = route.engines
    route.engines = []
    try:
        reply = await http.post("/openai/v1/completions", json={"model": "llm", "prompt": "x"})
    finally:
        route.engines = saved
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "no engine is ready" in reply.json()["error"]["message"]
