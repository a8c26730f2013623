"""The encoder lane (pure ASGI ahead of FastAPI's router) answers every encoder request byte
for byte as the FastAPI routes do: the same gateway settings and mesh, once with the lane and
once without it, get the same requests, answers and failures alike."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.encoder_lane import EncoderLane
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import serve_gateway

TEXTS = ["Paris is a city in France.", "The weather in London was terrible today, Maria said."]
JSON = {"content-type": "application/json"}


def _v2(texts: list[str], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "input-0", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def _binary_v2(texts: list[str]) -> tuple[bytes, dict[str, str]]:
    """A V2 body with its input in the binary tensor extension, output asked raw too."""
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(texts)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


BINARY, BINARY_HEADERS = _binary_v2(TEXTS)
# (path, body bytes, headers)
REQUESTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/openai/v1/embeddings", _json({"model": "embed", "input": TEXTS}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": "one"}), JSON),
    (
        "/openai/v1/embeddings",
        _json({"model": "embed", "input": "one", "encoding_format": "base64"}),
        JSON,
    ),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": [[101, 2000, 102]]}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": TEXTS, "dimensions": 8}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": [""]}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": []}), JSON),
    ("/openai/v1/embeddings", _json({"model": "nope", "input": "x"}), JSON),
    ("/openai/v1/embeddings", _json({"model": "sentiment", "input": "x"}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed"}), JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": 5}), JSON),
    ("/openai/v1/embeddings", b'{"model": "embed", "input": "x"', JSON),
    ("/openai/v1/embeddings", b"", JSON),
    ("/openai/v1/embeddings", _json({"model": "embed", "input": "x"}), {}),
    (
        "/openai/v1/embeddings",
        _json({"model": "embed", "input": "x"}),
        {"content-type": "text/plain"},
    ),
    (
        "/openai/v1/embeddings",
        _json({"model": "embed", "input": "x"}),
        {"content-type": "application/vnd.api+json"},
    ),
    (
        "/openai/v1/embeddings",
        _json({"model": "embed", "input": "x"}),
        {"content-type": "Application/JSON; charset=utf-8"},
    ),
    ("/openai/v1/embeddings", b'{"model": "embed", "input": "a\\ud800"}', JSON),
    ("/openai/v1/embeddings", b'{"model": "embed", "input": "a\tb"}', JSON),
    ("/openai/v1/embeddings", b'{"model": "embed", "model": "nope", "input": "x"}', JSON),
    (
        "/openai/v1/rerank",
        _json({"model": "rerank", "query": "capital of France", "documents": TEXTS, "top_n": 1}),
        JSON,
    ),
    (
        "/openai/v1/rerank",
        _json(
            {
                "model": "rerank",
                "query": "capital",
                "documents": [{"text": t} for t in TEXTS],
                "return_documents": False,
            }
        ),
        JSON,
    ),
    ("/openai/v1/rerank", _json({"model": "rerank", "query": "", "documents": TEXTS}), JSON),
    ("/openai/v1/rerank", _json({"model": "rerank", "query": "q", "documents": []}), JSON),
    ("/openai/v1/rerank", _json({"model": "embed", "query": "q", "documents": TEXTS}), JSON),
    ("/v1/models/fill:predict", _json({"instances": ["Paris is the [MASK] of France."]}), JSON),
    ("/v1/models/ner:predict", _json({"instances": TEXTS}), {}),
    ("/v1/models/sentiment:predict", _json({"instances": TEXTS}), JSON),
    (
        "/v1/models/sentiment:predict",
        _json({"instances": TEXTS, "parameters": {"return_probabilities": True}}),
        JSON,
    ),
    (
        "/v1/models/ner:predict",
        _json({"instances": TEXTS, "parameters": {"return_raw_logits": "maybe"}}),
        JSON,
    ),
    ("/v1/models/rerank:predict", _json({"instances": [["capital", t] for t in TEXTS]}), JSON),
    ("/v1/models/rerank:predict", _json({"instances": TEXTS}), JSON),
    ("/v1/models/sentiment:predict", _json({"instances": []}), JSON),
    ("/v1/models/sentiment:predict", b"[1, 2", JSON),
    ("/v1/models/nope:predict", _json({"instances": TEXTS}), JSON),
    (
        "/v1/models/llm:predict",
        _json({"instances": ["hello"], "parameters": {"max_tokens": 3}}),
        {},
    ),
    ("/v2/models/embed/infer", _json(_v2(TEXTS)), JSON),
    ("/v2/models/fill/infer", _json(_v2(["a [MASK] b"], return_probabilities=True)), JSON),
    ("/v2/models/sentiment/infer", _json(_v2(TEXTS)), JSON),
    ("/v2/models/sentiment/infer", _json({"inputs": []}), JSON),
    ("/v2/models/sentiment/infer", _json({"inputs": [{"name": "x"}]}), JSON),
    ("/v2/models/nope/infer", _json(_v2(TEXTS)), JSON),
    ("/v2/models/ner/infer", BINARY, BINARY_HEADERS),
    ("/v2/models/ner/infer", BINARY, {"Inference-Header-Content-Length": "nine"}),
]


def _without_lane(app: FastAPI) -> None:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not EncoderLane]


@pytest.fixture(scope="module")
async def plain_gateway(mesh):
    async with serve_gateway(GatewaySettings(), mesh.plan(), prepare=_without_lane) as (url, _):
        yield url


def _comparable(reply: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes, less the date header and a rerank answer's random id."""
    headers = [(k, v) for k, v in reply.headers.multi_items() if k != "date"]
    body = re.sub(rb'"id":"rerank-[0-9a-f]+"', b'"id":"rerank"', reply.content)
    return reply.status_code, headers, body


@pytest.mark.parametrize("index", range(len(REQUESTS)))
async def test_lane_answers_as_the_routes_do(gateway, plain_gateway, index):
    path, body, headers = REQUESTS[index]
    headers = {**headers, "X-Request-Id": f"lane-{index}"}
    url, app = gateway
    assert any(m.cls is EncoderLane for m in app.user_middleware)
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as lane,
        httpx.AsyncClient(base_url=plain_gateway, timeout=30) as plain,
    ):
        fast = await lane.post(path, content=body, headers=headers)
        slow = await plain.post(path, content=body, headers=headers)
    assert _comparable(fast) == _comparable(slow)
    assert fast.status_code < 500, fast.text
