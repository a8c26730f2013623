"""Engines report their requests in flight (from every client) on each stream; the gateway's
routing counts the ones it did not send. Two real fake-engine gRPC servers; "another gateway"
is a second client holding streams open on one of them."""

from __future__ import annotations

import asyncio
import time

from services.common.engine import SamplingParams, Task
from services.common.llm_tensors import generate_request
from services.common.model_list import Endpoints, MeshPlan, ModelEntry
from services.gateway import grpc_clients as rpc
from services.gateway.core import MeshClient
from services.gateway.grpc_clients import CallContext
from services.gateway.replica import Replica
from services.gateway.routing import ReplicaRouter
from services.gateway.settings import GatewaySettings
from tests.fakes import FakeEngine, ready
from tests.helpers.metrics import poll
from tests.unit.gateway.conftest import start_engine


def _call() -> CallContext:
    return CallContext(request_id="r", deadline=time.monotonic() + 60)


async def _hold(replica: Replica, started: asyncio.Event) -> None:
    request = generate_request("llm", [1, 2, 3], SamplingParams(max_tokens=400), request_id="x")
    async for _ in rpc.stream_generate(replica, request, _call()):
        started.set()


async def test_load_from_other_clients_steers_the_gateway_away():
    busy, idle = (FakeEngine([ready("llm", Task.TEXT_GENERATION)]) for _ in range(2))
    busy.token_delay = idle.token_delay = 0.05
    runners = [await start_engine(engine) for engine in (busy, idle)]
    addresses = [f"127.0.0.1:{r.bound_port}" for r in runners]
    entry = ModelEntry("llm", "", Task.TEXT_GENERATION, routing="least_loaded")
    plan = MeshPlan([entry], {"llm": Endpoints(["127.0.0.1:1"], {"huggingface": addresses})})
    router = ReplicaRouter(plan)
    other = Replica(addresses[0])  # another gateway's channel to the busy engine
    holders: list[asyncio.Task] = []
    try:
        await router.start()
        route = router.route("llm")
        assert await poll(lambda: route.backend is not None, timeout=10)
        for _ in range(6):
            started = asyncio.Event()
            holders.append(asyncio.ensure_future(_hold(other, started)))
            await asyncio.wait_for(started.wait(), 10)
        mesh = MeshClient(router, GatewaySettings())
        for _ in range(6):
            deltas = mesh.generate(
                route, [5, 6], SamplingParams(max_tokens=2), _call(), logprobs=False
            )
            assert [d async for d in deltas]
        mine = len(busy.requests) - 6
        assert mine <= 1, f"{mine} of 6 went to the engine busy with another client's requests"
        if mine:  # the one call that brought the engine's report
            assert router.replicas[addresses[0]].others_in_flight == 6
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        await other.close()
        await router.close()
        for runner in runners:
            await runner.server.stop(0)
