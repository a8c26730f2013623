"""Drain on a stop: health NOT_SERVING at once, new inference calls refused with
UNAVAILABLE, calls in flight (a stream) finish within the grace, exit status 0."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.converters import infer_request_to_pb
from services.common.engine import SamplingParams, Task
from services.common.llm_tensors import generate_request
from services.common.oip_servicer import InferenceServicer
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import GrpcServiceRunner, serve_engine
from tests.fakes import FakeEngine, ready


def _generation(tokens: int):
    request = generate_request(
        "gen", [1, 2], SamplingParams(max_tokens=tokens), request_id="drain", stream=True
    )
    return infer_request_to_pb(request, raw=True)


async def test_stop_flips_health_refuses_new_work_and_lets_streams_finish():
    engine = FakeEngine([ready("gen", Task.TEXT_GENERATION, 4096)], token_delay=0.05)
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=10)
    servicer = InferenceServicer(engine, server_name="fake")
    runner.add(lambda s: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, s))
    served = asyncio.ensure_future(serve_engine(engine, runner, poll_seconds=0.01))
    while runner.bound_port is None:
        await asyncio.sleep(0.01)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.bound_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        while (await health.Check(request, timeout=5)).status != 1:
            await asyncio.sleep(0.01)

        async def stream(tokens: int) -> int:
            async def one():
                yield _generation(tokens)

            replies = 0
            async for reply in stub.ModelStreamInfer(one(), timeout=30):
                assert not reply.error_message, reply.error_message
                replies += 1
            return replies

        streams = [asyncio.ensure_future(stream(30)) for _ in range(5)]
        while len(engine.running) < 5:
            await asyncio.sleep(0.01)
        stopped = time.monotonic()
        runner.request_stop()
        while (await health.Check(request, timeout=5)).status == 1:
            await asyncio.sleep(0.01)
        assert time.monotonic() - stopped < 1.0
        try:
            await stub.ModelInfer(_generation(2), timeout=5)
            raise AssertionError("a draining server took new work")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert all(count >= 1 for count in await asyncio.gather(*streams))
    assert await asyncio.wait_for(served, 15) == 0
    assert not engine.aborted


async def test_keepalive_pings_over_an_idle_watch_do_not_get_the_connection_closed():
    """A caller pinging while its health watch is idle (as the gateway does) keeps working;
    gRPC's default server answers such pings with GOAWAY "too_many_pings"."""
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, min_client_ping_ms=500)
    port = await runner.start()
    await runner.set_serving(True)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.keepalive_time_ms", 1000)]
    )
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    watch = health.Watch(request)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    await asyncio.sleep(5)  # five pings with no data on the connection
    assert (await health.Check(request, timeout=5)).status == 1
    watch.cancel()
    await channel.close()
    await runner.server.stop(0)
