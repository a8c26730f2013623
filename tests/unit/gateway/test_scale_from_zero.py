"""Scale from zero: a request to a model with no replica waits (bounded) for one, counted as
waiting in the per-model gauge the autoscaler reads, then proceeds or gets 503 + Retry-After."""

from __future__ import annotations

import asyncio
import time

import httpx

from services.common.engine import Task
from services.common.model_list import Scaling
from services.gateway.settings import GatewaySettings
from services.launcher.autoscaler import Autoscaler, GatewayLoad
from tests.helpers.metrics import poll
from tests.unit.gateway.conftest import serve_gateway

LLM_ONLY = {"llm": (Task.TEXT_GENERATION, "tiny-llama", 64)}
BODY = {"model": "llm", "prompt": "hello", "max_tokens": 3}
WAITING = 'hfmesh_gateway_model_requests{model="llm",state="waiting"}'


def scaled_to_zero_plan(mesh):
    plan = mesh.plan(engines={"huggingface": []}, models=LLM_ONLY)
    plan.models[0].scaling = Scaling(min_replicas=0, max_replicas=2, target_requests=1)
    return plan


async def test_a_request_waits_for_the_first_replica(mesh):
    settings = GatewaySettings(scale_from_zero_wait=30)
    # ready with no engine: the gateway waits for the tokenizer only
    async with serve_gateway(settings, scaled_to_zero_plan(mesh)) as (url, app):
        routes = app.state.gateway.routes
        route = routes.by_name["llm"]
        assert route.engines == []
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert (await client.get("/v2/models/llm/ready")).status_code == 200
            request = asyncio.ensure_future(client.post("/openai/v1/completions", json=BODY))
            assert await poll(lambda: route.waiting == 1), "the request is not waiting"
            metrics = (await client.get("/metrics")).text
            assert f"{WAITING} 1.0" in metrics.splitlines()
            await asyncio.sleep(0.2)
            assert not request.done()
            # what the control-plane wiring does when a replica registers
            replica = routes._replica(mesh.engine_address)
            replica.start()
            route.engines = [("huggingface", [replica])]
            routes.notify_replicas_changed()
            reply = await asyncio.wait_for(request, 10)
            assert reply.status_code == 200, reply.text
            assert route.waiting == 0
            metrics = (await client.get("/metrics")).text
            assert f"{WAITING} 0.0" in metrics.splitlines()


async def test_no_replica_within_the_wait_is_503_with_retry_after(mesh):
    settings = GatewaySettings(scale_from_zero_wait=0.3)
    async with serve_gateway(settings, scaled_to_zero_plan(mesh)) as (url, app):
        route = app.state.gateway.routes.by_name["llm"]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started = time.monotonic()
            reply = await client.post("/openai/v1/completions", json=BODY)
            waited = time.monotonic() - started
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert "scaled to zero; none became ready within 0.3 s" in reply.json()["error"]["message"]
        assert 0.3 <= waited < 5
        assert route.waiting == 0


async def test_a_model_that_cannot_scale_to_zero_does_not_wait(mesh):
    plan = scaled_to_zero_plan(mesh)
    plan.models[0].scaling = Scaling(min_replicas=1, max_replicas=2, target_requests=1)
    async with serve_gateway(GatewaySettings(), plan, wait=False) as (url, app):
        route = app.state.gateway.routes.by_name["llm"]
        assert await poll(lambda: any(r.available for r in route.tokenizers), timeout=10)
        assert not route.ready
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started = time.monotonic()
            reply = await client.post("/openai/v1/completions", json=BODY)
        assert reply.status_code == 503 and time.monotonic() - started < 5
        assert "no engine is ready" in reply.json()["error"]["message"]


async def test_the_autoscaler_sees_the_waiting_request_and_scales_the_model_from_zero(mesh):
    plan = scaled_to_zero_plan(mesh)
    plan.models[0].replicas = 0
    async with serve_gateway(GatewaySettings(), plan) as (url, app):
        routes = app.state.gateway.routes
        route = routes.by_name["llm"]
        loop = asyncio.get_running_loop()

        def add_replica() -> None:  # the launcher starts an engine; it registers
            replica = routes._replica(mesh.engine_address)
            replica.start()
            route.engines = [("huggingface", [replica])]
            routes.notify_replicas_changed()

        def scale(model: str, replicas: int) -> None:
            assert (model, replicas) == ("llm", 1)
            loop.call_soon_threadsafe(add_replica)

        autoscaler = Autoscaler(plan.models, GatewayLoad(f"{url}/metrics"), scale)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await asyncio.to_thread(autoscaler.tick)  # idle: stays at zero
            assert autoscaler.models["llm"].replicas == 0
            request = asyncio.ensure_future(client.post("/openai/v1/completions", json=BODY))
            assert await poll(lambda: route.waiting == 1)
            await asyncio.to_thread(autoscaler.tick)
            assert autoscaler.models["llm"].replicas == 1
            reply = await asyncio.wait_for(request, 10)
            assert reply.status_code == 200, reply.text
