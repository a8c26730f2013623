"""`serve_engine`: one lifecycle for every engine — start, serve, drain on a stop,
exit non-zero when the start fails or the engine dies."""

from __future__ import annotations

import asyncio

from services.common.server import GrpcServiceRunner, serve_engine
from services.launcher.processes import grpc_serving
from tests.fakes import FakeEngine


class LifecycleEngine(FakeEngine):
    def __init__(self, *, fail_start: bool = False) -> None:
        super().__init__(infos=[])
        self.fail_start = fail_start
        self.alive = True
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")
        if self.fail_start:
            raise RuntimeError("no such model")

    async def shutdown(self) -> None:
        self.events.append("shutdown")
        self.alive = False  # as vLLM's: not healthy once shut down

    def healthy(self) -> bool:
        return self.alive


async def _serving(runner: GrpcServiceRunner) -> None:
    while runner.bound_port is None or not await asyncio.to_thread(
        grpc_serving, f"127.0.0.1:{runner.bound_port}"
    ):
        await asyncio.sleep(0.02)


async def test_a_requested_stop_drains_and_exits_zero():
    engine = LifecycleEngine()
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1)
    served = asyncio.ensure_future(serve_engine(engine, runner, poll_seconds=0.01))
    await asyncio.wait_for(_serving(runner), 10)
    runner.request_stop()
    assert await asyncio.wait_for(served, 10) == 0
    assert engine.events == ["start", "shutdown"]


async def test_a_dead_engine_stops_serving_and_exits_non_zero():
    engine = LifecycleEngine()
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1)
    served = asyncio.ensure_future(serve_engine(engine, runner, poll_seconds=0.01))
    await asyncio.wait_for(_serving(runner), 10)
    engine.alive = False
    assert await asyncio.wait_for(served, 10) == 1
    assert not await asyncio.to_thread(grpc_serving, f"127.0.0.1:{runner.bound_port}")
    assert engine.events == ["start", "shutdown"]


async def test_a_failed_start_exits_non_zero():
    engine = LifecycleEngine(fail_start=True)
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1)
    assert await asyncio.wait_for(serve_engine(engine, runner), 10) == 1
    assert engine.events == ["start", "shutdown"]
    await runner.server.stop(0)  # the process would exit here
