"""Every health Watch sees every status change, however many other watches come and go: the
gateway holds a Watch per replica address, and one engine reached at two addresses (its
compose service name and its registered IP) is watched twice. grpcio-health-checking's
servicer forgot a watcher once another watch of the same service ended."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import GrpcServiceRunner

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _runner() -> tuple[GrpcServiceRunner, grpc.aio.Channel]:
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    port = await runner.start()  # NOT_SERVING until set_serving(True), as an engine loading
    return runner, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def _watch(channel: grpc.aio.Channel):
    # types-grpcio-health-checking declares HealthStub without its methods.
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)  # type: ignore[attr-defined]


async def test_a_watch_sees_serving_after_another_watch_of_the_service_ended():
    runner, channel = await _runner()
    other = grpc.aio.insecure_channel(f"127.0.0.1:{runner.bound_port}")
    try:
        kept, ended = _watch(channel), _watch(other)
        assert (await kept.read()).status == NOT_SERVING
        assert (await ended.read()).status == NOT_SERVING
        ended.cancel()  # a replica closed, or a watch renewed at its deadline
        await other.close()
        await asyncio.sleep(0.2)  # the server has seen that watch end
        await runner.set_serving(True)
        assert (await asyncio.wait_for(kept.read(), 5)).status == SERVING
        fresh = _watch(channel)
        assert (await asyncio.wait_for(fresh.read(), 5)).status == SERVING
        await runner.set_serving(False)
        assert (await asyncio.wait_for(kept.read(), 5)).status == NOT_SERVING
        assert (await asyncio.wait_for(fresh.read(), 5)).status == NOT_SERVING
        fresh.cancel()
        kept.cancel()
    finally:
        await channel.close()
        await runner.server.stop(0)


async def test_watches_end_when_the_server_drains_after_saying_not_serving():
    runner, channel = await _runner()
    try:
        await runner.set_serving(True)
        watches = [_watch(channel) for _ in range(3)]
        for watch in watches:
            assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
        await asyncio.wait_for(runner.drain_and_stop(), 10)
        for watch in watches:
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            assert await asyncio.wait_for(watch.read(), 5) is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
    finally:
        await channel.close()
