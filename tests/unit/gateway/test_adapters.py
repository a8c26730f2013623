"""LoRA adapters of the model list at the gateway: `/v1/models` lists each with its base model
(`parent`, as vLLM's server does), and a request naming an adapter goes to the base model's
engines (its tokenizer, its replicas) with the adapter's name on the engine request, which is
how an engine selects the adapter (docs/protocol.md)."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.common.engine import Task
from services.common.model_list import Adapter, Endpoints, MeshPlan, ModelEntry
from services.gateway.settings import GatewaySettings
from tests.fakes import FakeEngine, ready
from tests.unit.gateway.conftest import serve_gateway, start_engine


@pytest.fixture(scope="module")
async def served(mesh):
    engine = FakeEngine(
        [ready("llm", Task.TEXT_GENERATION, 64), ready("llm-sql", Task.TEXT_GENERATION, 64)]
    )
    runner = await start_engine(engine)
    entry = ModelEntry(
        name="llm",
        source="/models/llm",
        task=Task.TEXT_GENERATION,
        max_model_len=64,
        adapters=[Adapter("llm-sql", "/adapters/sql")],
    )
    endpoints = Endpoints(
        tokenizer=[mesh.tokenizer_address],
        engines={"huggingface": [f"127.0.0.1:{runner.bound_port}"]},
    )
    plan = MeshPlan(models=[entry], endpoints={"llm": endpoints})
    async with serve_gateway(GatewaySettings(), plan) as (url, _):
        yield url, engine
    await runner.server.stop(0)


async def test_models_lists_adapters_with_their_base_model(served):
    url, _ = served
    async with httpx.AsyncClient(base_url=url) as http:
        cards = {card["id"]: card for card in (await http.get("/openai/v1/models")).json()["data"]}
    assert cards["llm"]["parent"] is None and cards["llm"]["root"] == "/models/llm"
    assert cards["llm-sql"]["parent"] == "llm"
    assert cards["llm-sql"]["root"] == "/adapters/sql"
    assert cards["llm-sql"]["task"] == "text_generation"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_for_an_adapter_selects_it_on_the_base_models_engine(served, stream):
    url, engine = served
    sdk = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    for model in ("llm-sql", "llm"):
        reply = await sdk.chat.completions.create(
            model=model, messages=messages, max_tokens=2, stream=stream
        )
        if stream:
            chunks = [chunk async for chunk in reply]
            assert {chunk.model for chunk in chunks} == {model}
        else:
            assert reply.model == model and reply.choices[0].message.content
        assert engine.requests[-1].model == model
    await sdk.close()
