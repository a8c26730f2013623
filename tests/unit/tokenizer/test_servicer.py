"""The tokenizer service over real gRPC (port 0) with the `tritonclient` client:
every model name of docs/protocol.md, the KServe flags, errors, transformer mode."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from transformers import AutoTokenizer
from tritonclient.utils import InferenceServerException

from services.common import task_results
from services.common.engine import Task
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import GrpcServiceRunner
from services.tokenizer.core import ModelOptions, TokenizerCore, TokenizerModel
from services.tokenizer.loader import load_tokenizer
from services.tokenizer.predictor import PredictorClient
from services.tokenizer.servicer import TokenizerServicer
from tests.fakes import FakeEngine, ready
from tests.helpers.triton import bool_input, bytes_input, int_input
from tests.unit.gateway.conftest import start_engine


async def serve(models: list[TokenizerModel], predictor: PredictorClient | None = None):
    servicer = TokenizerServicer(predictor=predictor)
    servicer.attach(TokenizerCore(models, workers=2))
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1)
    runner.add(lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))
    port = await runner.start()
    await runner.set_serving(True)
    return runner, triton.InferenceServerClient(f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
async def service(model_path):
    models = [
        TokenizerModel(
            "llm", load_tokenizer(model_path("tiny-llama")), ModelOptions(task=Task.TEXT_GENERATION)
        ),
        TokenizerModel(
            "fill",
            load_tokenizer(model_path("tiny-bert-fill-mask")),
            ModelOptions(task=Task.FILL_MASK),
        ),
        TokenizerModel(
            "ner-cased",
            load_tokenizer(model_path("tiny-bert-ner"), lower_case=False),
            ModelOptions(
                task=Task.TOKEN_CLASSIFICATION,
                lower_case=False,
                add_special_tokens=False,
                max_model_len=4,
            ),
        ),
    ]
    runner, client = await serve(models)
    yield client
    await client.close()
    await runner.server.stop(0)


async def test_repository_lists_every_model_name(service):
    index = await service.get_model_repository_index()
    names = {m.name for m in index.models}
    assert {
        "llm.render",
        "llm.preprocess",
        "llm.postprocess",
        "llm.detokenize",
        "fill.render",
    } <= names
    assert "llm" not in names  # only with --predictor_host
    metadata = await service.get_model_metadata("llm.render")
    assert [o.name for o in metadata.outputs] == ["input_ids", "prompt"]


async def test_render_messages_and_text(service, model_path):
    reference = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hel"}]
    generation = bool_input("add_generation_prompt", False)
    reply = await service.infer(
        "llm.render", [bytes_input("messages", [json.dumps(messages)]), generation]
    )
    want = reference.apply_chat_template(messages, add_generation_prompt=False, tokenize=True)[
        "input_ids"
    ]
    assert reply.as_numpy("input_ids").tolist() == want
    assert reply.get_response().parameters["max_model_len"].int64_param == 512
    text = await service.infer("llm.render", [bytes_input("text_input", ["Hello world"])])
    assert text.as_numpy("input_ids").tolist() == reference("Hello world")["input_ids"]
    assert text.as_numpy("prompt")[0] == b"Hello world"


async def test_preprocess_postprocess_fill_mask(service, model_path):
    reference = AutoTokenizer.from_pretrained(model_path("tiny-bert-fill-mask"))
    texts = [f"the {reference.mask_token} sat", f"a {reference.mask_token} on the mat"]
    reply = await service.infer("fill.preprocess", [bytes_input("text", texts)])
    batch = reference(texts, padding=True, truncation=True, return_tensors="np")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(reply.as_numpy(name), batch[name])
    logits = (
        np.random.default_rng(0)
        .standard_normal((2, batch["input_ids"].shape[1], len(reference)))
        .astype(np.float32)
    )
    logits_input = triton.InferInput("logits", list(logits.shape), "FP32")
    logits_input.set_data_from_numpy(logits)
    post = await service.infer(
        "fill.postprocess", [logits_input, int_input("input_ids", batch["input_ids"])]
    )
    want = task_results.fill_mask(
        logits, batch["input_ids"], mask_token_id=reference.mask_token_id, decode=reference.decode
    )
    assert post.as_numpy("output-0").tolist() == want.tolist()


async def test_kserve_flags_case_special_tokens_truncation(service, model_path):
    reply = await service.infer(
        "ner-cased.preprocess", [bytes_input("text", ["Hello World again and again"])]
    )
    cased = AutoTokenizer.from_pretrained(model_path("tiny-bert-ner"), do_lower_case=False)
    want = cased(
        ["Hello World again and again"], add_special_tokens=False, max_length=4, truncation=True
    )["input_ids"]
    assert reply.as_numpy("input_ids").tolist() == want
    assert reply.as_numpy("input_ids").shape == (1, 4)
    lowered = AutoTokenizer.from_pretrained(model_path("tiny-bert-ner"))(
        ["Hello World"], add_special_tokens=False
    )["input_ids"]
    assert reply.as_numpy("input_ids").tolist()[0][:2] != lowered[0][:2]


async def test_detokenize_text_and_token_strings(service, model_path):
    reference = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    ids = np.array(reference("Hello world")["input_ids"])
    outputs = [triton.InferRequestedOutput("text_output"), triton.InferRequestedOutput("tokens")]
    reply = await service.infer("llm.detokenize", [int_input("input_ids", ids)], outputs=outputs)
    assert reply.as_numpy("text_output")[0].decode() == reference.decode(
        ids, skip_special_tokens=True
    )
    assert [t.decode() for t in reply.as_numpy("tokens")] == [
        reference.decode([int(i)]) for i in ids
    ]


@pytest.mark.parametrize(
    "model,inputs,code,fragment",
    [
        (
            "llm.render",
            lambda: [bytes_input("messages", ["{not json"])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages",
        ),
        (
            "llm.render",
            lambda: [bytes_input("bogus", ["x"])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "bogus",
        ),
        (
            "fill.preprocess",
            lambda: [int_input("text", np.array([1]))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "BYTES",
        ),
        (
            "fill.postprocess",
            lambda: [int_input("input_ids", np.array([[1]]))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "logits",
        ),
        (
            "llm.detokenize",
            lambda: [int_input("input_ids", np.array([10**6]))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "vocabulary",
        ),
        (
            "nope.render",
            lambda: [bytes_input("text_input", ["x"])],
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            "llm",
            lambda: [bytes_input("text_input", ["x"])],
            grpc.StatusCode.NOT_FOUND,
            "predictor_host",
        ),
    ],
)
async def test_errors_name_what_was_wrong(service, model, inputs, code, fragment):
    with pytest.raises(InferenceServerException) as raised:
        await service.infer(model, inputs())
    assert raised.value.status() == str(code) and fragment in raised.value.message()


async def test_transformer_mode_fronts_an_oip_predictor(model_path):
    engine = FakeEngine([ready("sentiment", Task.SEQUENCE_CLASSIFICATION)])
    predictor_runner = await start_engine(engine)
    predictor = PredictorClient(f"127.0.0.1:{predictor_runner.bound_port}", timeout=10)
    options = ModelOptions(
        task=Task.SEQUENCE_CLASSIFICATION, tensor_input_names=("input_ids", "attention_mask")
    )
    model = TokenizerModel("sentiment", load_tokenizer(model_path("tiny-bert-sentiment")), options)
    runner, client = await serve([model], predictor)
    try:
        texts = ["great film", "awful plot twist"]
        reply = await client.infer("sentiment", [bytes_input("input-0", texts)])
        batch = AutoTokenizer.from_pretrained(model_path("tiny-bert-sentiment"))(
            texts, padding=True, return_tensors="np"
        )
        ids = batch["input_ids"].astype(np.float32)
        logits = np.stack([ids.sum(axis=1) % 5, (ids.sum(axis=1) + 2) % 5], axis=-1)
        assert (
            reply.as_numpy("output-0").tolist()
            == task_results.sequence_classification(logits).tolist()
        )
        assert set(engine.encodes[-1].tensors) == {
            "input_ids",
            "attention_mask",
        }  # --tensor_input_names
        await predictor_runner.set_serving(False)
        await predictor_runner.server.stop(0)
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("sentiment", [bytes_input("input-0", texts)])
        assert raised.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    finally:
        await client.close()
        await predictor.close()
        await runner.server.stop(0)


async def test_stream_errors_carry_their_status(service):
    import tritonclient.grpc.service_pb2 as triton_pb
    import tritonclient.grpc.service_pb2_grpc as triton_grpc

    request = triton_pb.ModelInferRequest(model_name="nope.render", id="s1")
    stub = triton_grpc.GRPCInferenceServiceStub(service._channel)
    async for reply in stub.ModelStreamInfer(iter([request])):
        assert "nope" in reply.error_message and reply.infer_response.id == "s1"
        assert reply.infer_response.parameters["error_code"].string_param == "NOT_FOUND"
        break
