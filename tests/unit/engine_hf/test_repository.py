"""`ModelRepository`: several tiny models in one engine, routed by name, loaded and unloaded
through Triton's repository RPCs (a real grpc.aio server on port 0, `tritonclient.grpc.aio`)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc.aio as tc
from tritonclient.utils import InferenceServerException

from services.common.engine import EncodeRequest, ModelState
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.model_list import MeshPlan
from services.common.oip_servicer import InferenceServicer
from services.common.pb.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from services.common.server import GrpcServiceRunner
from services.engine_hf.core import HFEngine
from services.engine_hf.repository import ModelRepository, model_settings
from services.engine_hf.settings import HFEngineSettings
from services.launcher.plan import plan_processes
from tests.helpers.mesh import model_entry
from tests.helpers.triton import bytes_input
from tests.unit.engine_hf.helpers import collect, request

SENTENCES = ["what a lovely day", "this is dreadful"]


def _settings(model_path, name: str, model: str, **flags) -> HFEngineSettings:
    return HFEngineSettings(model_dir=model_path(model), model_name=name, **flags)


@pytest.fixture
async def repository(model_path):
    repo = ModelRepository(
        [
            _settings(model_path, "sentiment", "tiny-bert-sentiment"),
            _settings(model_path, "fill", "tiny-bert-fill-mask"),
            _settings(model_path, "llama", "tiny-llama"),
        ]
    )
    await repo.start()
    yield repo
    await repo.shutdown()


@pytest.fixture
async def client(repository):
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    servicer = InferenceServicer(repository, server_name="hf")
    runner.add(lambda server: add_GRPCInferenceServiceServicer_to_server(servicer, server))
    port = await runner.start()
    await runner.set_serving(True)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    await client.close()
    await runner.drain_and_stop()


async def _classify(client, model: str) -> np.ndarray:
    reply = await client.infer(model, [bytes_input("input-0", SENTENCES)])
    return reply.as_numpy("output-0")


async def test_each_model_answers_as_an_engine_of_its_own(repository, model_path):
    alone = HFEngine(_settings(model_path, "sentiment", "tiny-bert-sentiment"))
    await alone.start()
    try:
        for texts in (SENTENCES, ["x"]):
            ask = EncodeRequest("r", "sentiment", texts=texts)
            shared, own = await repository.encode(ask), await alone.encode(ask)
            assert shared.outputs.keys() == own.outputs.keys()
            for name, array in own.outputs.items():
                np.testing.assert_array_equal(shared.outputs[name], array)
    finally:
        await alone.shutdown()
    greedy = request("llama", "Hello there", max_tokens=8, ignore_eos=True)
    assert len((await collect(repository, greedy)).ids) == 8
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        await repository.encode(EncodeRequest("r", "nope", texts=["x"]))


async def test_index_unload_and_load_over_triton_rpcs(client, repository):
    index = await client.get_model_repository_index()
    assert {m.name: m.state for m in index.models} == {
        "sentiment": "READY",
        "fill": "READY",
        "llama": "READY",
    }
    before = await _classify(client, "sentiment")
    await client.unload_model("sentiment")
    index = {
        m.name: (m.state, m.reason) for m in (await client.get_model_repository_index()).models
    }
    assert index["sentiment"] == ("UNAVAILABLE", "unloaded") and index["fill"][0] == "READY"
    assert not await client.is_model_ready("sentiment")
    assert not await client.is_server_ready()
    with pytest.raises(InferenceServerException) as unloaded:
        await _classify(client, "sentiment")
    assert unloaded.value.status() == "StatusCode.UNAVAILABLE"
    # the others serve on meanwhile
    reply = await client.infer("fill", [bytes_input("input-0", ["the [MASK] is here"])])
    assert reply.as_numpy("output-0").shape == (1,)
    await client.unload_model("sentiment")  # again: already unloaded, fine
    await client.load_model("sentiment")
    assert await client.is_model_ready("sentiment") and await client.is_server_ready()
    np.testing.assert_array_equal(await _classify(client, "sentiment"), before)
    await client.load_model("sentiment")  # loaded already: a no-op
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as unknown:
            await call("nope")
        assert unknown.value.status() == "StatusCode.NOT_FOUND"


async def test_an_unloaded_model_fails_unavailable_and_loads_anew(repository):
    engine = repository._engine_of("fill")
    await repository.unload_model("fill")
    assert engine.loaded is not None and engine.models()[0].state is ModelState.UNAVAILABLE
    with pytest.raises(Unavailable, match="not loaded"):
        await repository.encode(EncodeRequest("r", "fill", texts=["a [MASK]"]))
    assert [m.state for m in repository.models() if m.name == "fill"] == [ModelState.UNAVAILABLE]
    await repository.load_model("fill")
    assert repository._engine_of("fill") is not engine


async def test_adapters_load_on_the_one_generative_model(repository, model_path):
    await repository.load_adapter("lora", model_path("tiny-llama-lora"))
    assert [m.base_model for m in repository.models() if m.name == "lora"] == ["llama"]
    base = await collect(repository, request("llama", "Hi", max_tokens=6, ignore_eos=True))
    lora = await collect(repository, request("lora", "Hi", max_tokens=6, ignore_eos=True))
    assert base.ids != lora.ids
    await repository.load_model("lora")  # a loaded adapter: a no-op
    with pytest.raises(InvalidArgument, match="a model's name"):
        await repository.load_adapter("fill", model_path("tiny-llama-lora"))
    with pytest.raises(InvalidArgument, match="a model, not an adapter"):
        await repository.unload_adapter("fill")
    await repository.unload_adapter("lora")
    assert "lora" not in {m.name for m in repository.models()}


async def test_adapters_need_a_single_generative_model(model_path):
    repo = ModelRepository(
        [_settings(model_path, "a", "tiny-llama"), _settings(model_path, "b", "tiny-t5")]
    )
    await repo.start()
    try:
        with pytest.raises(InvalidArgument, match="has 2 \\(a, b\\)"):
            await repo.load_adapter("lora", model_path("tiny-llama-lora"))
    finally:
        await repo.shutdown()


def test_model_settings_from_a_planned_list(tmp_path, model_path):
    plan = MeshPlan(
        [
            model_entry("fill", model_path("tiny-bert-fill-mask"), "fill_mask", max_model_len=64),
            model_entry("ner", model_path("tiny-bert-ner"), "token_classification"),
            model_entry("chat", model_path("tiny-llama"), "text_generation", backend="vllm"),
        ]
    )
    path = tmp_path / "mesh.yaml"
    plan_processes(plan, host="127.0.0.1", base_port=7000, mesh_file=str(path))
    path.write_text(plan.to_yaml())
    flags = {"model_list": str(path), "max_batch_size": 4}
    every = model_settings(HFEngineSettings(**flags))
    assert [(s.model_name, s.task.value if s.task else None) for s in every] == [
        ("fill", "fill_mask"),
        ("ner", "token_classification"),
    ]
    assert every[0].max_model_len == 64 and every[0].max_batch_size == 4
    assert every[0].model_dir == model_path("tiny-bert-fill-mask") and every[0].model_list is None
    one = model_settings(HFEngineSettings(**flags, models="ner"))
    assert [s.model_name for s in one] == ["ner"]
    with pytest.raises(ValueError, match="not in .*: nope"):
        model_settings(HFEngineSettings(**flags, models="ner,nope"))
    with pytest.raises(ValueError, match="not served by the HF engine: chat"):
        model_settings(HFEngineSettings(**flags, models="chat"))
    with pytest.raises(ValueError, match="not both"):
        HFEngineSettings(model_list=str(path), model_dir="/x")
    with pytest.raises(ValueError, match="--models names models of a --model_list"):
        HFEngineSettings(model_dir="/x", models="a")
