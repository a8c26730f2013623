"""Request ids, API key, body limit, the route prefix setting, metrics."""

from __future__ import annotations

import httpx
import pytest

from services.gateway.settings import load_settings
from tests.unit.gateway.conftest import serve_gateway

CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_request_id_is_echoed_and_reaches_the_engine(http, mesh):
    reply = await http.post(
        "/openai/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "req-abc.123"}
    )
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "req-abc.123"
    assert mesh.engine.requests[-1].request_id.startswith("req-abc.123")
    generated = (await http.get("/v2/health/live")).headers["x-request-id"]
    assert len(generated) == 32
    bad = await http.get("/v2/health/live", headers={"X-Request-Id": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"


async def test_api_key_on_inference_routes_only(mesh):
    settings = load_settings(["--api_key", "s3cret"], env={})
    async with serve_gateway(settings, mesh.plan()) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            denied = await client.post("/openai/v1/chat/completions", json=CHAT)
            assert (
                denied.status_code == 401
                and denied.json()["error"]["type"] == "authentication_error"
            )
            wrong = await client.post(
                "/v1/models/sentiment:predict",
                json={"instances": ["x"]},
                headers={"Authorization": "Bearer nope"},
            )
            assert wrong.status_code == 401 and isinstance(wrong.json()["error"], str)
            allowed = await client.post(
                "/openai/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer s3cret"}
            )
            assert allowed.status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert (await client.get("/metrics")).status_code == 200


async def test_body_limit_is_413(mesh):
    settings = load_settings(["--max_body_bytes", "2000"], env={})
    async with serve_gateway(settings, mesh.plan()) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
            reply = await client.post("/openai/v1/chat/completions", json=big)
            assert reply.status_code == 413 and "2000" in reply.json()["error"]["message"]

            async def chunks():
                for _ in range(5):
                    yield b"x" * 1000

            streamed = await client.post(
                "/v1/models/sentiment:predict",
                content=chunks(),
                headers={"content-type": "application/json"},
            )
            assert streamed.status_code == 413 and isinstance(streamed.json()["error"], str)
            assert (await client.post("/openai/v1/chat/completions", json=CHAT)).status_code == 200


@pytest.mark.parametrize(
    "env_value,path", [("", "/v1/chat/completions"), ("/custom/", "/custom/v1/chat/completions")]
)
async def test_route_prefix_from_the_kserve_variable(mesh, env_value, path):
    settings = load_settings([], env={"KSERVE_OPENAI_ROUTE_PREFIX": env_value})
    async with serve_gateway(settings, mesh.plan()) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post(path, json=CHAT)).status_code == 200
            assert (await client.post("/openai/v1/chat/completions", json=CHAT)).status_code == 404
            models = await client.get(path.replace("chat/completions", "models"))
            assert models.json()["object"] == "list"
            invalid = await client.post(path, json={"model": "llm"})
            assert invalid.status_code == 400 and "type" in invalid.json()["error"]


def test_prefix_flag_wins_over_the_variable():
    assert (
        load_settings(
            ["--openai_route_prefix", "x"], env={"KSERVE_OPENAI_ROUTE_PREFIX": "y"}
        ).openai_prefix_path
        == "/x"
    )
    assert load_settings([], env={}).openai_prefix_path == "/openai"


async def test_metrics_count_requests_and_ttft(http):
    await http.post("/openai/v1/chat/completions", json=CHAT)
    text = (await http.get("/metrics")).text
    assert 'hfmesh_gateway_requests_total{family="openai",status="200"}' in text
    assert 'hfmesh_gateway_time_to_first_token_seconds_count{model="llm"}' in text
    assert "hfmesh_gateway_replica_serving" in text
