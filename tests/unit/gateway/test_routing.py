"""Replica choice, fallback, health watch, and cancellation on client disconnect."""

from __future__ import annotations

import asyncio
import json

import httpx

from services.common.engine import Task
from services.common.errors import Unavailable
from services.gateway.settings import GatewaySettings
from tests.fakes import FakeEngine, ready
from tests.helpers.metrics import poll
from tests.unit.gateway.conftest import serve_gateway, start_engine

LLM_ONLY = {"llm": (Task.TEXT_GENERATION, "tiny-llama", 64)}
CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def test_disconnect_aborts_the_engine_request(mesh):
    mesh.engine.token_delay = 0.05
    try:
        async with serve_gateway(GatewaySettings(), mesh.plan(models=LLM_ONLY)) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                body = {**CHAT, "max_tokens": 40, "stream": True}
                async with client.stream("POST", "/openai/v1/chat/completions", json=body) as reply:
                    assert reply.status_code == 200
                    seen = 0
                    async for line in reply.aiter_lines():
                        if line.startswith("data: ") and json.loads(line[6:])["choices"][0][
                            "delta"
                        ].get("content"):
                            seen += 1
                            if seen == 3:
                                break
                request_id = mesh.engine.requests[-1].request_id
                assert request_id in mesh.engine.running
            loop = asyncio.get_running_loop()
            closed_at = loop.time()
            assert await poll(lambda: request_id in mesh.engine.aborted, timeout=1.0), (
                "engine not aborted within 1 s"
            )
            assert request_id not in mesh.engine.running
            assert loop.time() - closed_at < 1.0
    finally:
        mesh.engine.token_delay = 0.0


async def test_unavailable_engine_falls_back_before_output(mesh):
    broken = FakeEngine(
        [ready("llm", Task.TEXT_GENERATION, 64)],
        fail_with=Unavailable("model 'llm' is not ready (loading)"),
    )
    broken_runner = await start_engine(broken)
    engines = {
        "vllm": [f"127.0.0.1:{broken_runner.bound_port}"],
        "huggingface": [mesh.engine_address],
    }
    try:
        async with serve_gateway(
            GatewaySettings(), mesh.plan(engines=engines, models=LLM_ONLY)
        ) as (url, app):
            route = app.state.gateway.routes.by_name["llm"]
            assert [b for b, _ in route.engines] == ["vllm", "huggingface"]
            async with httpx.AsyncClient(base_url=url) as client:
                before = len(mesh.engine.requests)
                reply = await client.post("/openai/v1/chat/completions", json=CHAT)
                assert reply.status_code == 200, reply.text
                assert len(mesh.engine.requests) == before + 1
                vllm_replica = route.engines[0][1][0]
                assert not vllm_replica.available  # skipped for a while after UNAVAILABLE
    finally:
        await broken_runner.server.stop(0)


async def test_health_watch_moves_traffic_to_the_fallback(mesh):
    primary = FakeEngine([ready("llm", Task.TEXT_GENERATION, 64)])
    primary_runner = await start_engine(primary)
    engines = {
        "vllm": [f"127.0.0.1:{primary_runner.bound_port}"],
        "huggingface": [mesh.engine_address],
    }
    try:
        async with serve_gateway(
            GatewaySettings(), mesh.plan(engines=engines, models=LLM_ONLY)
        ) as (url, app):
            route = app.state.gateway.routes.by_name["llm"]
            async with httpx.AsyncClient(base_url=url) as client:
                assert (
                    await client.post("/openai/v1/chat/completions", json=CHAT)
                ).status_code == 200
                assert len(primary.requests) == 1 and route.backend == "vllm"
                await primary_runner.set_serving(False)
                assert await poll(lambda: route.backend == "huggingface")
                before = len(mesh.engine.requests)
                assert (
                    await client.post("/openai/v1/chat/completions", json=CHAT)
                ).status_code == 200
                assert len(primary.requests) == 1 and len(mesh.engine.requests) == before + 1
                await primary_runner.set_serving(True)
                assert await poll(lambda: route.backend == "vllm")
    finally:
        await primary_runner.server.stop(0)


async def test_least_in_flight_replica(mesh):
    second = FakeEngine([ready("llm", Task.TEXT_GENERATION, 64)], token_delay=0.02)
    second_runner = await start_engine(second)
    mesh.engine.token_delay = 0.02
    engines = {"huggingface": [mesh.engine_address, f"127.0.0.1:{second_runner.bound_port}"]}
    try:
        async with serve_gateway(
            GatewaySettings(), mesh.plan(engines=engines, models=LLM_ONLY)
        ) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                before = len(mesh.engine.requests)
                body = {**CHAT, "max_tokens": 20}
                replies = await asyncio.gather(
                    *(client.post("/openai/v1/chat/completions", json=body) for _ in range(6))
                )
                assert all(r.status_code == 200 for r in replies)
                assert len(second.requests) == 3 and len(mesh.engine.requests) - before == 3
    finally:
        mesh.engine.token_delay = 0.0
        await second_runner.server.stop(0)


async def test_not_ready_until_every_model_has_its_services(mesh):
    plan = mesh.plan(engines={"huggingface": ["127.0.0.1:1"]}, models=LLM_ONLY)
    async with serve_gateway(GatewaySettings(), plan, wait=False) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            reply = await client.get("/v2/health/ready")
            assert reply.status_code == 503 and reply.json() == {"ready": False}
            assert (await client.get("/v2/models/llm/ready")).status_code == 503
            chat = await client.post("/openai/v1/chat/completions", json=CHAT)
            assert chat.status_code == 503 and "retry-after" in chat.headers


async def test_a_replica_lost_mid_generation_is_replaced_for_a_non_streaming_request(mesh):
    doomed = FakeEngine([ready("llm", Task.TEXT_GENERATION, 64)], token_delay=0.05)
    doomed_runner = await start_engine(doomed)
    engines = {"huggingface": [f"127.0.0.1:{doomed_runner.bound_port}", mesh.engine_address]}
    try:
        async with serve_gateway(
            GatewaySettings(), mesh.plan(engines=engines, models=LLM_ONLY)
        ) as (url, _):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                before = len(mesh.engine.requests)
                body = {**CHAT, "max_tokens": 20}
                request = asyncio.ensure_future(
                    client.post("/openai/v1/chat/completions", json=body)
                )
                assert await poll(lambda: len(doomed.requests) == 1, timeout=5)
                await asyncio.sleep(0.2)  # a few tokens generated, then the replica dies
                await doomed_runner.server.stop(0)
                reply = await asyncio.wait_for(request, 10)
        assert reply.status_code == 200, reply.text
        assert len(mesh.engine.requests) == before + 1  # generated again on the other one
        assert reply.json()["usage"]["completion_tokens"] == 20
    finally:
        await doomed_runner.server.stop(0)
