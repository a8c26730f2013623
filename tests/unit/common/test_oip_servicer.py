"""The shared OIP servicer over a real in-process grpc.aio server, called with tritonclient."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as tc
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from services.common.engine import ModelInfo, ModelState, Task
from services.common.oip_servicer import InferenceServicer
from services.common.pb.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from services.common.server import GrpcServiceRunner
from tests.fakes import FakeEngine, fake_text, fake_token, ready
from tests.helpers.triton import bytes_input as _bytes_input
from tests.helpers.triton import int_input
from tests.helpers.triton import llm_inputs as _llm_inputs


def fake_engine(token_delay: float = 0.0) -> FakeEngine:
    models = [
        ready("gen", Task.TEXT_GENERATION, 64),
        ready("emb", Task.TEXT_EMBEDDING),
        ready("rank", Task.RERANK),
        ModelInfo("cold", Task.TEXT_GENERATION, ModelState.LOADING),
    ]
    return FakeEngine(models, token_delay=token_delay)


@pytest.fixture
async def served():
    engine = fake_engine()
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    runner.add(
        lambda s: add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(engine, server_name="fake"), s
        )
    )
    port = await runner.start()
    await runner.set_serving(True)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    yield engine, client
    await client.close()
    await runner.drain_and_stop()


async def test_health_and_metadata(served):
    engine, client = served
    assert await client.is_server_live()
    assert not await client.is_server_ready()  # "cold" is still loading
    assert await client.is_model_ready("gen")
    assert not await client.is_model_ready("nope")
    meta = await client.get_server_metadata()
    assert meta.name == "fake"
    index = await client.get_model_repository_index()
    assert {m.name: m.state for m in index.models}["cold"] == "LOADING"


async def test_unary_generation_includes_prompt_unless_excluded(served):
    _, client = served
    result = await client.infer("gen", _llm_inputs("hi there", {"max_tokens": 3}))
    assert result.as_numpy("text_output")[0] == ("hi there" + fake_text([], 3)).encode()
    assert result.as_numpy("finish_reason")[0] == b"length"
    assert result.as_numpy("num_output_tokens").tolist() == [3]
    result = await client.infer(
        "gen", _llm_inputs("hi", {"max_tokens": "2"}, exclude_input_in_output=True)
    )
    assert result.as_numpy("text_output")[0] == fake_text([], 2).encode()
    assert result.as_numpy("output_ids").tolist() == [fake_token([], 0, 0), fake_token([], 0, 1)]


async def test_stream_deltas(served):
    _, client = served

    async def requests():
        yield {
            "model_name": "gen",
            "inputs": _llm_inputs("a b", {"max_tokens": 3, "temperature": 0}, stream=True),
            "request_id": "r1",
        }

    texts, reasons = [], []
    async for result, error in client.stream_infer(requests()):
        assert error is None
        texts.append(result.as_numpy("text_output")[0].decode())
        reasons.append(result.as_numpy("finish_reason"))
        if len(texts) == 3:
            break
    assert texts == [f" w{fake_token([], 0, i)}" for i in range(3)]
    assert reasons[0] is None and reasons[2][0] == b"length"


async def test_empty_final_response_as_triton_sends_it(served):
    from tritonclient.grpc import _utils

    _, client = served
    request = _utils._get_inference_request(
        "gen",
        _llm_inputs("a", {"max_tokens": 2}, stream=True),
        "",
        "r2",
        None,
        0,
        False,
        False,
        0,
        None,
        None,
    )
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    stub = _stub(client)
    finals = []
    async for response in stub.ModelStreamInfer(iter([request])):
        finals.append(
            (
                len(response.infer_response.outputs),
                response.infer_response.parameters["triton_final_response"].bool_param,
            )
        )
        if finals[-1][1]:
            break
    assert finals == [(2, False), (5, False), (0, True)]


def _stub(client):
    import tritonclient.grpc.service_pb2_grpc as triton_grpc

    return triton_grpc.GRPCInferenceServiceStub(client._channel)


async def test_bad_requests_are_invalid_argument_and_server_survives(served):
    _, client = served
    bad = [
        ("gen", _llm_inputs("x", {"max_tokens": -1}), "max_tokens"),
        ("gen", _llm_inputs("x", {"bogus": 1}), "bogus"),
        ("gen", [_bytes_input("wrong", ["x"])], "unknown input 'wrong'"),
        ("emb", [InferInput("input_ids", [1, 2], "FP32")], "datatype must be INT64"),
    ]
    bad[3][1][0].set_data_from_numpy(np.zeros((1, 2), np.float32))
    for model, inputs, match in bad:
        with pytest.raises(InferenceServerException, match=match) as info:
            await client.infer(model, inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        await client.infer("missing", _llm_inputs("x", {}))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        await client.infer("cold", _llm_inputs("x", {}))
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert await client.is_server_live()


async def test_encoder_text_and_tensor_styles(served):
    _, client = served
    result = await client.infer(
        "emb", [_bytes_input("input-0", ["abc", "de"])], outputs=[InferRequestedOutput("output-0")]
    )
    assert result.as_numpy("output-0").tolist() == [[3.0, 1.0], [2.0, 1.0]]
    assert result.as_numpy("text") is None
    result = await client.infer("emb", [int_input("input_ids", [[1, 2, 3]])])
    assert result.as_numpy("last_hidden_state").shape == (1, 3, 8)
    result = await client.infer(
        "rank", [_bytes_input("query", ["q"]), _bytes_input("documents", ["a", "bbb"])]
    )
    assert result.as_numpy("output-0").tolist() == [1.0, 3.0]


async def test_cancelled_stream_aborts_engine_request():
    engine = fake_engine(token_delay=0.05)
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    runner.add(
        lambda s: add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(engine, server_name="fake"), s
        )
    )
    port = await runner.start()
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")

    async def requests():
        yield {"model_name": "gen", "inputs": _llm_inputs("x", {"max_tokens": 1000}, stream=True)}
        await asyncio.sleep(30)

    received = 0
    stream = client.stream_infer(requests())
    async for _result, _error in stream:
        received += 1
        if received == 3:
            break
    stream.cancel()
    for _ in range(100):
        if engine.aborted:
            break
        await asyncio.sleep(0.02)
    assert len(engine.aborted) == 1 and not engine.running
    await client.close()
    await runner.drain_and_stop()


async def test_adapter_load_and_unload_with_triton_messages(served):
    import tritonclient.grpc.service_pb2 as triton_pb

    _, client = served
    stub = _stub(client)
    request = triton_pb.RepositoryModelLoadRequest(model_name="gen-lora")
    request.parameters["lora_path"].string_param = "/tmp/adapter"
    await stub.RepositoryModelLoad(request)
    assert await client.is_model_ready("gen-lora")
    await client.unload_model("gen-lora")
    assert not await client.is_model_ready("gen-lora")
    await client.load_model("gen-lora2", config='{"lora_path": "/tmp/adapter"}')
    assert await client.is_model_ready("gen-lora2")
    with pytest.raises(InferenceServerException) as info:
        await client.unload_model("gen-lora")
    assert info.value.status() == "StatusCode.NOT_FOUND"


async def test_stream_error_carries_its_status(served):
    _, client = served

    async def requests():
        yield {"model_name": "cold", "inputs": _llm_inputs("x", {}, stream=True)}

    async for result, error in client.stream_infer(requests()):
        assert result is None and "not ready" in str(error)
        break
    from tritonclient.grpc import _utils

    request = _utils._get_inference_request(
        "missing", _llm_inputs("x", {}), "", "", None, 0, False, False, 0, None, None
    )
    async for response in _stub(client).ModelStreamInfer(iter([request])):
        assert response.infer_response.parameters["error_code"].string_param == "NOT_FOUND"
        break


def _pending(request, index, text, finish=None):
    from services.common import llm_tensors
    from services.common.engine import GenerateDelta
    from services.common.oip_servicer import PendingDeltas

    options = llm_tensors.LLMOptions(
        stream=True, exclude_input_in_output=True, coalesce_deltas=True
    )
    delta = GenerateDelta(
        index=index,
        text=text,
        token_ids=[len(text)],
        num_input_tokens=3,
        num_output_tokens=1,
        finish_reason=finish,
    )
    return PendingDeltas(request, options, 1, [delta])


def test_queued_deltas_of_a_sequence_leave_as_one_response():
    from services.common.codec import InferRequest
    from services.common.converters import infer_response_from_pb
    from services.common.oip_servicer import _coalesce
    from services.common.pb import inference_pb2 as pb

    a, b = InferRequest("llm", [], id="a"), InferRequest("llm", [], id="b")
    marker = pb.ModelStreamInferResponse()
    queued = [
        _pending(a, 0, "x"),
        _pending(b, 0, "p"),
        _pending(a, 0, "y", "length"),  # b between: a still merges
        _pending(a, 0, "z"),  # after a finish: never merged into it
        _pending(b, 0, "q"),
        marker,
        _pending(b, 0, "r"),  # nothing merges across a ready response
    ]
    out = _coalesce(queued)
    texts = []
    for item in out:
        if item is marker:
            texts.append("|")
            continue
        tensors = {t.name: t.data for t in infer_response_from_pb(item.infer_response).outputs}
        texts.append(
            (
                item.infer_response.id,
                bytes(tensors["text_output"][0]).decode(),
                "finish_reason" in tensors,
            )
        )
    assert texts == [
        ("a", "xy", True),
        ("b", "pq", False),
        ("a", "z", False),
        "|",
        ("b", "r", False),
    ]
