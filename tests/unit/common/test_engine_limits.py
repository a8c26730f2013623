"""The engine-side limits of the shared servicer: the gRPC message cap (RESOURCE_EXHAUSTED,
which the gateway answers as 413) and the pending-request backstop (UNAVAILABLE)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.codec import InferRequest, Tensor, as_bytes_array
from services.common.converters import infer_request_to_pb
from services.common.engine import SamplingParams, Task
from services.common.errors import PayloadTooLarge, ResourceExhausted, from_grpc
from services.common.llm_tensors import generate_request
from services.common.oip_servicer import InferenceServicer
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import MAX_MESSAGE_BYTES, GrpcServiceRunner
from tests.fakes import FakeEngine, ready


@pytest.fixture
async def served():
    engine = FakeEngine(
        [ready("gen", Task.TEXT_GENERATION, 4096), ready("emb", Task.TEXT_EMBEDDING)],
        token_delay=0.05,
    )
    servicer = InferenceServicer(engine, server_name="fake", max_pending=4)
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    runner.add(lambda s: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, s))
    port = await runner.start()
    await runner.set_serving(True)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    yield engine, servicer, pb_grpc.GRPCInferenceServiceStub(channel)
    await channel.close()
    await runner.drain_and_stop()


async def test_a_message_over_8_mib_is_resource_exhausted(served):
    engine, _, stub = served
    big = "x" * (MAX_MESSAGE_BYTES + 1024)
    request = InferRequest("emb", [Tensor("input-0", "BYTES", as_bytes_array([big]))])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(infer_request_to_pb(request, raw=True), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not engine.encodes
    error = from_grpc(caught.value.code(), caught.value.details())
    assert isinstance(error, PayloadTooLarge) and error.http_status == 413
    assert type(from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "tenant over quota")) is (
        ResourceExhausted
    )
    small = InferRequest("emb", [Tensor("input-0", "BYTES", as_bytes_array(["hi"]))])
    assert (await stub.ModelInfer(infer_request_to_pb(small, raw=True), timeout=30)).outputs


async def test_the_backstop_refuses_with_unavailable_counting_n(served):
    engine, servicer, stub = served

    def generation(n: int):
        request = generate_request(
            "gen", [1, 2, 3], SamplingParams(max_tokens=40, n=n), logprobs=False, request_id="r"
        )
        return infer_request_to_pb(request, raw=True)

    running = asyncio.ensure_future(stub.ModelInfer(generation(3), timeout=30))
    while servicer.pending < 3:
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ModelInfer(generation(2), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "--max_pending_requests" in caught.value.details()
    assert ("retry-after", "1") in tuple(caught.value.trailing_metadata() or ())
    assert (await stub.ModelInfer(generation(1), timeout=30)).outputs
    await running
    assert servicer.pending == 0
