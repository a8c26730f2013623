"""Tenants on a served gateway: keys on every inference route, models per tenant, budgets with
OpenAI's rate-limit headers, the tenants file reloaded while serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from services.common.errors import InvalidArgument
from services.gateway.settings import load_settings
from services.gateway.tenants import TenantDirectory, hash_key, parse_tenants
from tests.unit.gateway.conftest import serve_gateway

KEY_A, KEY_B = "sk-team-a-Secret", "sk-team-b-Secret"
CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def tenants_yaml(extra: str = "") -> str:
    return f"""
tenants:
  - name: team-a
    keys: ["{hash_key(KEY_A)}"]
    models: [llm, embed]
    tokens_per_minute: 100
  - name: team-b
    keys: ["{hash_key(KEY_B).removeprefix("sha256:")}"]
    models: [sentiment]
{extra}"""


@pytest.fixture
async def served(mesh, tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(tenants_yaml())
    settings = load_settings(
        ["--tenants_file", str(path), "--tenants_reload", "0.05", "--api_key", "legacy"], env={}
    )
    async with serve_gateway(settings, mesh.plan()) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client, path, app


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


INFERENCE_ROUTES = [
    ("POST", "/openai/v1/completions", {"model": "llm", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/openai/v1/chat/completions", CHAT),
    ("POST", "/openai/v1/embeddings", {"model": "embed", "input": "hi"}),
    ("POST", "/openai/v1/rerank", {"model": "rerank", "query": "q", "documents": ["d"]}),
    ("GET", "/openai/v1/models", None),
    ("POST", "/openai/tokenize", {"model": "llm", "prompt": "hi"}),
    ("POST", "/openai/score", {"model": "embed", "text_1": "a", "text_2": "b"}),
    ("POST", "/openai/detokenize", {"model": "llm", "tokens": [1, 2]}),
    ("POST", "/openai/classify", {"model": "sentiment", "input": "good"}),
    ("GET", "/", None),
    ("GET", "/v2", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/llm", None),
    ("POST", "/v1/models/sentiment:predict", {"instances": ["good"]}),
    ("GET", "/v2/models/llm", None),
    ("GET", "/v2/models/llm/ready", None),
    (
        "POST",
        "/v2/models/sentiment/infer",
        {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["good"]}]},
    ),
]


async def test_every_inference_route_needs_a_right_key(served):
    client, _, _ = served
    for headers in (
        {},
        auth("nope"),
        auth(KEY_A.lower()),
        auth(KEY_A.upper()),
        {"Authorization": KEY_A},
    ):
        for method, path, body in INFERENCE_ROUTES:
            reply = await client.request(method, path, json=body, headers=headers)
            assert reply.status_code == 401, (path, headers, reply.text)
            assert reply.headers["www-authenticate"] == "Bearer"
    for path in ("/metrics", "/v2/health/live", "/v2/health/ready"):
        assert (await client.get(path)).status_code == 200
    # the legacy --api_key is one more tenant, with every model
    for method, path, body in INFERENCE_ROUTES:
        reply = await client.request(method, path, json=body, headers=auth("legacy"))
        assert reply.status_code == 200, (path, reply.text)


async def test_a_tenant_sees_and_uses_only_its_models(served):
    client, _, _ = served
    a, b = auth(KEY_A), auth(KEY_B)
    listed = await client.get("/openai/v1/models", headers=a)
    assert sorted(m["id"] for m in listed.json()["data"]) == ["embed", "llm"]
    assert (await client.get("/v1/models", headers=b)).json() == {"models": ["sentiment"]}
    # another tenant's model is answered exactly as a model that does not exist
    hidden = await client.post("/openai/v1/chat/completions", json=CHAT, headers=b)
    missing = await client.post(
        "/openai/v1/chat/completions", json={**CHAT, "model": "nosuch"}, headers=b
    )
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "nosuch", "llm"
    )
    assert "served models: sentiment)" in hidden.json()["error"]["message"]
    for method, path, body in INFERENCE_ROUTES:
        if "sentiment" in path or (body and body.get("model") in ("rerank", "sentiment")):
            reply = await client.request(method, path, json=body, headers=a)
            assert reply.status_code == 404, (path, reply.text)
    assert (
        await client.post("/v1/models/sentiment:predict", json={"instances": ["ok"]}, headers=b)
    ).status_code == 200


async def test_token_budget_429_with_rate_limit_headers(served):
    client, _, app = served
    a = auth(KEY_A)
    first = await client.post("/openai/v1/chat/completions", json=CHAT, headers=a)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert 100 - used <= int(first.headers["x-ratelimit-remaining-tokens"]) <= 100 - used + 2
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in first.headers  # team-a has no request budget
    refused = None
    for _ in range(10):
        reply = await client.post(
            "/openai/v1/chat/completions", json={**CHAT, "stream": True}, headers=a
        )
        if reply.status_code == 429:
            refused = reply
            break
        assert reply.status_code == 200
    assert refused is not None, "the budget never ran out"
    # refused before any SSE byte: a JSON error, OpenAI's type, Retry-After, the headers
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    need = first.json()["usage"]["prompt_tokens"] + CHAT["max_tokens"]
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < need
    metrics = (await client.get("/metrics")).text
    assert 'hfmesh_gateway_tenant_rejected_total{reason="tokens",tenant="team-a"}' in metrics
    assert 'hfmesh_gateway_tenant_completion_tokens_total{tenant="team-a"}' in metrics
    # embeddings count their input tokens (a second tenant's budget is its own)
    embedded = await client.post(
        "/openai/v1/embeddings", json={"model": "embed", "input": "hello"}, headers=a
    )
    assert embedded.status_code in (200, 429)
    if embedded.status_code == 200:
        assert "x-ratelimit-remaining-tokens" in embedded.headers


async def test_the_tenants_file_is_reloaded_while_serving(served):
    client, path, _ = served
    new_key = "sk-new-team"
    assert (await client.get("/v1/models", headers=auth(new_key))).status_code == 401
    path.write_text(
        tenants_yaml(f'  - name: team-c\n    keys: ["{hash_key(new_key)}"]\n    models: "*"\n')
    )
    for _ in range(200):
        reply = await client.get("/v1/models", headers=auth(new_key))
        if reply.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert reply.status_code == 200 and "llm" in reply.json()["models"]
    path.write_text("tenants: [ {name: broken")  # a broken file keeps the tenants in force
    await asyncio.sleep(0.3)
    assert (await client.get("/v1/models", headers=auth(new_key))).status_code == 200


def test_the_tenants_file_is_checked(tmp_path):
    good = parse_tenants(tenants_yaml(), "t")
    assert {t.name for _, t in good} == {"team-a", "team-b"}
    for text, wanted in (
        ("tenants: [{name: a, keys: [plainkey]}]", "not plain keys"),
        ("tenants: [{name: a, keys: []}]", "keys"),
        (f"tenants: [{{name: a, keys: ['{hash_key('k')}'], models: llm}}]", "models"),
        (f"tenants: [{{name: a, keys: ['{hash_key('k')}'], tokens: 3}}]", "tokens"),
        (
            json.dumps({"tenants": [{"name": "a", "keys": [hash_key("k")]}] * 2}),
            "appears twice",
        ),
    ):
        with pytest.raises(InvalidArgument) as error:
            parse_tenants(text, "t")
        assert wanted in error.value.message
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tenants": [{"name": "x", "keys": [hash_key("k")]}]}))
    directory = TenantDirectory(str(path))
    found = directory.identify("Bearer k")
    assert found is not None and found.name == "x" and found.allows("anything")
    assert directory.identify("Bearer K") is None and directory.identify("k") is None
    path.write_text(json.dumps({"tenants": [{"name": "u", "keys": [hash_key("clé")]}]}))
    assert directory.reload()
    sent = "Bearer " + "clé".encode().decode("latin-1")  # UTF-8 bytes, as ASGI reads them
    assert directory.identify(sent) is not None
    with pytest.raises(InvalidArgument):
        TenantDirectory(str(tmp_path / "missing.yaml"))


async def test_kserve_v2_generation_counts_its_tokens(served):
    """A V2 generation goes to the engine as it is: its prompt is counted by the tokenizer and
    the engine's reported counts settle it."""
    client, _, app = served
    body = {
        "inputs": [
            {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hello there"]},
            {
                "name": "sampling_parameters",
                "shape": [1],
                "datatype": "BYTES",
                "data": [json.dumps({"max_tokens": 5})],
            },
        ]
    }
    before = await client.post("/v2/models/llm/infer", json=body, headers=auth(KEY_A))
    assert before.status_code == 200, before.text
    outputs = {o["name"]: o["data"] for o in before.json()["outputs"]}
    used = outputs["num_input_tokens"][0] + outputs["num_output_tokens"][0]
    registry = app.state.gateway.metrics.registry
    team = {"tenant": "team-a"}
    prompt = registry.get_sample_value("hfmesh_gateway_tenant_prompt_tokens_total", team)
    completion = registry.get_sample_value("hfmesh_gateway_tenant_completion_tokens_total", team)
    assert (
        prompt == outputs["num_input_tokens"][0] and completion == outputs["num_output_tokens"][0]
    )
    assert int(before.headers["x-ratelimit-remaining-tokens"]) <= 100 - used + 1
