"""A client that keeps its connection alive with pings (the gateway does, every 30 s) is not
sent GOAWAY "too_many_pings" after an idle spell: its calls and its health Watch go on."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.server import GrpcServiceRunner


async def test_keepalive_pings_after_an_idle_spell_do_not_end_the_connection():
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.5)
    await runner.start()
    await runner.set_serving(True)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{runner.bound_port}", options=[("grpc.keepalive_time_ms", 1000)]
    )
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    watch = stub.Watch(request, timeout=30)  # type: ignore[attr-defined]
    try:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        for _ in range(2):
            await asyncio.sleep(3.5)  # idle: the client pings; gRPC's default strikes those
            for _ in range(20):
                reply = await stub.Check(request, timeout=5)  # type: ignore[attr-defined]
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                await asyncio.sleep(0.02)
        assert not watch.done()
    finally:
        watch.cancel()
        await channel.close()
        await runner.server.stop(0)
