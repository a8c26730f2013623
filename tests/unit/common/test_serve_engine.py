"""`serve_engine`: one lifecycle for every engine — start, serve, drain on a stop,
exit non-zero when the start fails or the engine dies; with a registration, published once
serving and withdrawn (draining first) before the server stops."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.registration import Registration
from services.common.server import GrpcServiceRunner, serve_engine
from services.control_plane.store import Endpoint, ServiceKey
from services.launcher.processes import free_port, grpc_serving
from tests.fakes import FakeEngine
from tests.unit.control_plane.helpers import Planes, eventually, mesh_file


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


class RecordingRunner(GrpcServiceRunner):
    def __init__(self, events: list) -> None:
        super().__init__(host="127.0.0.1", port=0, grace_seconds=0.1)
        self.events = events

    async def drain_and_stop(self) -> None:
        self.events.append("server stopping")
        await super().drain_and_stop()


async def test_a_registered_replica_drains_and_leaves_before_the_server_stops(tmp_path):
    planes = Planes(mesh_file(tmp_path))
    plane = await planes.start()
    events: list = []
    key = ServiceKey("m", "huggingface")
    plane.store.subscribe(lambda: events.append(plane.store.services()[key]))
    runner = RecordingRunner(events)
    registration = Registration(
        f"127.0.0.1:{plane.runner.bound_port}", "engine", ("m",), "huggingface"
    )
    try:
        served = asyncio.ensure_future(
            serve_engine(LifecycleEngine(), runner, registration=registration, poll_seconds=0.01)
        )
        await asyncio.wait_for(_serving(runner), 10)
        mine = Endpoint("127.0.0.1", runner.bound_port)
        await eventually(lambda: plane.store.services()[key] == [mine])
        runner.request_stop()
        assert await asyncio.wait_for(served, 10) == 0
        draining = Endpoint("127.0.0.1", runner.bound_port, draining=True)
        assert events == [[mine], [draining], [], "server stopping"]
    finally:
        await planes.stop_all()


async def test_an_unreachable_control_plane_is_a_clear_error_and_exit_status_1(caplog):
    engine = LifecycleEngine()
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1)
    nobody = f"127.0.0.1:{free_port()}"
    registration = Registration(nobody, "engine", ("m",), "huggingface", connect_timeout=0.5)
    served = serve_engine(engine, runner, registration=registration, poll_seconds=0.01)
    assert await asyncio.wait_for(served, 10) == 1
    assert f"the control plane at {nobody} is unreachable" in caplog.text
    assert not await asyncio.to_thread(grpc_serving, f"127.0.0.1:{runner.bound_port}")
    assert engine.events == ["start", "shutdown"]


async def test_a_health_watcher_does_not_hold_the_stop_for_the_grace():
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=30)
    served = asyncio.ensure_future(serve_engine(LifecycleEngine(), runner, poll_seconds=0.01))
    await asyncio.wait_for(_serving(runner), 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.bound_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        runner.request_stop()
        assert await asyncio.wait_for(served, 5) == 0  # not the 30 s grace


async def test_a_control_plane_name_that_does_not_resolve_is_a_clear_error(caplog):
    runner = GrpcServiceRunner(host="0.0.0.0", port=0, grace_seconds=0.1)
    registration = Registration("no-such-host.invalid:18000", "engine", ("m",), "huggingface")
    served = serve_engine(LifecycleEngine(), runner, registration=registration)
    assert await asyncio.wait_for(served, 10) == 1
    assert "control plane at no-such-host.invalid:18000" in caplog.text
