"""Request limits at the gateway: hostile bodies are a 400/413/431 on every route family,
and each content limit is a 400 naming its setting, before any engine work."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.errors import InvalidArgument
from services.gateway.limits import check_json_body, json_depth
from services.gateway.settings import load_settings
from tests.unit.gateway.conftest import serve_gateway

ROUTES = [
    "/openai/v1/chat/completions",
    "/openai/v1/completions",
    "/openai/v1/embeddings",
    "/openai/v1/rerank",
    "/v1/models/sentiment:predict",
    "/v2/models/sentiment/infer",
    "/v2/models/llm/infer",
]
HOSTILE = {
    "deep array": b"[" * 10_000 + b"]" * 10_000,
    "deep object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "deep inside a field": b'{"instances": ' + b"[" * 200 + b"]" * 200 + b"}",
    "not UTF-8": b'{"instances": ["caf\xe9"]}',
    "binary": b"\xff\xfe\x00\x01" * 64,
    "not JSON": b"instances=hello",
    "truncated": b'{"instances": ["a"',
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_hostile_bodies_are_400_on_every_route_family(http, path, kind):
    reply = await http.post(
        path, content=HOSTILE[kind], headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    message = error["message"] if path.startswith("/openai") else error
    assert isinstance(message, str) and message


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[[[", "b": [[1], {"c": "\\"]]]]"}]}') == 3
    assert json_depth(b'"no containers"') == 0
    assert json_depth(b"[" * 70 + b"]" * 70) == 70
    assert json_depth(b'[[{"a": [') == 4  # unclosed: as deep as it got


def test_the_depth_limit_counts_nesting_not_brackets():
    check_json_body(b"[" * 64 + b"]" * 64, max_depth=64)
    with pytest.raises(InvalidArgument, match="nests 65 levels deep; the limit is 64"):
        check_json_body(b"[" * 65 + b"]" * 65, max_depth=64)
    siblings = json.dumps({"messages": [{"role": "user", "content": "[{" * 50}] * 100}).encode()
    check_json_body(siblings, max_depth=3)
    with pytest.raises(InvalidArgument, match="nests 3 levels deep; the limit is 2"):
        check_json_body(siblings, max_depth=2)


async def test_depth_within_the_limit_still_works(http):
    nested = {
        "inputs": [
            {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": [["hello"]]}
        ]
    }
    reply = await http.post("/v2/models/sentiment/infer", json=nested)
    assert reply.status_code == 200, reply.text


async def test_header_limit_is_431(mesh):
    settings = load_settings(["--max_header_bytes", "2048"], env={})
    async with serve_gateway(settings, mesh.plan()) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            reply = await client.get("/v1/models", headers={"X-Big": "x" * 4000})
            assert reply.status_code == 431 and "2048" in reply.json()["error"]
            assert (await client.get("/v1/models")).status_code == 200


def _chat(**fields):
    return {
        "model": "llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **fields,
    }


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/openai/v1/embeddings", {"model": "embed", "input": ["x"] * 5}, "--max_inputs"),
        ("/openai/v1/embeddings", {"model": "embed", "input": [[1, 2]] * 5}, "--max_inputs"),
        (
            "/openai/v1/rerank",
            {"model": "rerank", "query": "q", "documents": ["d"] * 5},
            "--max_inputs",
        ),
        ("/v1/models/sentiment:predict", {"instances": ["x"] * 5}, "--max_inputs"),
        ("/v1/models/llm:predict", {"instances": ["x"] * 5}, "--max_inputs"),
        ("/openai/v1/chat/completions", _chat(n=3), "--max_n"),
        (
            "/openai/v1/completions",
            {"model": "llm", "prompt": "hi", "n": 2, "best_of": 3},
            "--max_n",
        ),
        ("/openai/v1/chat/completions", _chat(stop=["a", "b", "c"]), "--max_stop_sequences"),
        (
            "/openai/v1/chat/completions",
            _chat(messages=[{"role": "user", "content": "x" * 600}]),
            "--max_prompt_chars",
        ),
        (
            "/openai/v1/chat/completions",
            _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "x" * 600}]}]),
            "--max_prompt_chars",
        ),
        ("/openai/v1/completions", {"model": "llm", "prompt": "y" * 600}, "--max_prompt_chars"),
        (
            "/v2/models/sentiment/infer",
            {
                "inputs": [{"name": "t", "shape": [5], "datatype": "BYTES", "data": ["x"] * 5}],
            },
            "--max_inputs",
        ),
        (
            "/v2/models/llm/infer",
            {
                "inputs": [
                    {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["x"]}
                ],
                "outputs": [{"name": f"o{i}"} for i in range(5)],
            },
            "--max_requested_outputs",
        ),
    ],
)
async def test_content_limits_are_400_naming_the_setting(mesh, path, body, needle):
    settings = load_settings(
        [
            "--max_inputs=4",
            "--max_n=2",
            "--max_stop_sequences=2",
            "--max_prompt_chars=500",
            "--max_requested_outputs=4",
        ],
        env={},
    )
    before = len(mesh.engine.requests)
    async with serve_gateway(settings, mesh.plan()) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            reply = await client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert needle in (error["message"] if path.startswith("/openai") else error)
    assert len(mesh.engine.requests) == before


async def test_a_message_over_the_grpc_limit_is_413(http):
    big = "x" * (9 * 1024 * 1024)
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [big]}]}
    reply = await http.post("/v2/models/llm/infer", json=body)
    assert reply.status_code == 413, reply.text[:300]
    assert "gRPC size limit" in reply.json()["error"]
