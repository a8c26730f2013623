"""`--encoder_route`: text straight to an engine that tokenizes (auto) answers exactly what the
split path (tokenizer → engine tensors → tokenizer) answers, on every encoder route; the engine
sees text on one and tensors on the other; class names and non-rerank text pairs stay split."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.gateway.settings import GatewaySettings, load_settings
from tests.unit.gateway.conftest import serve_gateway


def _v2(name: str, texts: list[str], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "input-0", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


TEXTS = ["Paris is a city in France.", "The weather in London was terrible today, Maria said."]
REQUESTS = [
    ("/openai/v1/embeddings", {"model": "embed", "input": TEXTS}),
    ("/openai/v1/embeddings", {"model": "embed", "input": "one", "encoding_format": "base64"}),
    (
        "/openai/v1/rerank",
        {"model": "rerank", "query": "capital of France", "documents": TEXTS, "top_n": 1},
    ),
    ("/openai/v1/score", {"model": "rerank", "text_1": "capital", "text_2": TEXTS}),
    ("/openai/v1/score", {"model": "embed", "text_1": "capital", "text_2": TEXTS}),
    ("/v1/models/fill:predict", {"instances": ["Paris is the [MASK] of France."]}),
    ("/v1/models/ner:predict", {"instances": TEXTS}),
    ("/v1/models/sentiment:predict", {"instances": TEXTS}),
    (
        "/v1/models/sentiment:predict",
        {"instances": TEXTS, "parameters": {"return_probabilities": True}},
    ),
    ("/v1/models/ner:predict", {"instances": TEXTS, "parameters": {"return_raw_logits": True}}),
    ("/v1/models/rerank:predict", {"instances": [["capital", t] for t in TEXTS]}),
    ("/v2/models/embed/infer", _v2("embed", TEXTS)),
    ("/v2/models/fill/infer", _v2("fill", ["a [MASK] b"], return_probabilities=True)),
    ("/v2/models/sentiment/infer", _v2("sentiment", TEXTS)),
]


def _stable(body: Any) -> Any:
    """The answer without what differs per request (ids, timestamps)."""
    if isinstance(body, dict):
        return {k: _stable(v) for k, v in body.items() if k not in ("id", "created")}
    if isinstance(body, list):
        return [_stable(v) for v in body]
    return body


@pytest.fixture(scope="module")
async def split_gateway(mesh):
    async with serve_gateway(GatewaySettings(encoder_route="split"), mesh.plan()) as (url, _):
        yield url


@pytest.mark.parametrize("path,body", REQUESTS)
async def test_both_routes_answer_the_same(http, split_gateway, mesh, path, body):
    seen = len(mesh.engine.encodes)
    direct = await http.post(path, json=body)
    assert direct.status_code == 200, direct.text
    assert all(e.tensors is None for e in mesh.engine.encodes[seen:]), "text went to the engine"
    seen = len(mesh.engine.encodes)
    async with httpx.AsyncClient(base_url=split_gateway, timeout=30) as split_http:
        split = await split_http.post(path, json=body)
    assert split.status_code == 200, split.text
    assert all(e.tensors is not None for e in mesh.engine.encodes[seen:]), "tensors went"
    assert _stable(direct.json()) == _stable(split.json())


async def test_class_names_and_text_pairs_take_the_split_route(http, mesh):
    reply = await http.post("/openai/classify", json={"model": "sentiment", "input": TEXTS})
    assert reply.status_code == 200, reply.text
    assert mesh.engine.encodes[-1].tensors is not None
    pairs = _v2("sentiment", TEXTS)
    pairs["inputs"].append({"name": "text_pair", "shape": [2], "datatype": "BYTES", "data": TEXTS})
    reply = await http.post("/v2/models/sentiment/infer", json=pairs)
    assert reply.status_code == 200, reply.text
    assert mesh.engine.encodes[-1].tensors is not None


async def test_bad_input_is_refused_alike(http, split_gateway):
    body = {"model": "embed", "input": [""]}
    direct = await http.post("/openai/v1/embeddings", json=body)
    async with httpx.AsyncClient(base_url=split_gateway, timeout=30) as split_http:
        split = await split_http.post("/openai/v1/embeddings", json=body)
    assert direct.status_code == split.status_code


def test_encoder_route_flag():
    assert load_settings([]).encoder_route == "auto"
    assert load_settings(["--encoder_route", "split"]).encoder_route == "split"
    with pytest.raises(SystemExit):
        load_settings(["--encoder_route", "sometimes"])
