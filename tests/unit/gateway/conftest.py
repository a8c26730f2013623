"""An in-process mesh for gateway tests: real gRPC servers on free ports (a fake
engine behind the shared OIP servicer, the real tokenizer service with real
tokenizers) and the gateway app served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from services.common.engine import Task
from services.common.model_list import Endpoints, MeshPlan, ModelEntry
from services.common.oip_servicer import InferenceServicer
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import GrpcServiceRunner
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from services.launcher.processes import free_port
from services.tokenizer.core import ModelOptions, TokenizerCore, TokenizerModel
from services.tokenizer.loader import load_tokenizer
from services.tokenizer.servicer import TokenizerServicer
from tests.fakes import FakeEngine, ready

# name → (task, tokenizer folder, max_model_len)
MODELS = {
    "llm": (Task.TEXT_GENERATION, "tiny-llama", 64),
    "embed": (Task.TEXT_EMBEDDING, "all-minilm-l6-v2", None),
    "sentiment": (Task.SEQUENCE_CLASSIFICATION, "tiny-bert-sentiment", None),
    "ner": (Task.TOKEN_CLASSIFICATION, "tiny-bert-ner", None),
    "fill": (Task.FILL_MASK, "tiny-bert-fill-mask", None),
    "rerank": (Task.RERANK, "tiny-bert-reranker", None),
}


@dataclass
class Mesh:
    engine: FakeEngine
    engine_runner: GrpcServiceRunner
    tokenizer_runner: GrpcServiceRunner
    tokenizer_core: TokenizerCore

    @property
    def engine_address(self) -> str:
        return f"127.0.0.1:{self.engine_runner.bound_port}"

    @property
    def tokenizer_address(self) -> str:
        return f"127.0.0.1:{self.tokenizer_runner.bound_port}"

    def plan(self, *, engines: dict[str, list[str]] | None = None, models=MODELS) -> MeshPlan:
        entries, endpoints = [], {}
        for name, (task, _, limit) in models.items():
            engine_map = engines or {"huggingface": [self.engine_address]}
            backend = next(iter(engine_map))
            entries.append(
                ModelEntry(
                    name=name,
                    source="",
                    task=task,
                    backend=backend,
                    fallback="huggingface" if backend == "vllm" else None,
                    max_model_len=limit,
                )
            )
            endpoints[name] = Endpoints(
                tokenizer=[self.tokenizer_address], engines=dict(engine_map)
            )
        return MeshPlan(models=entries, endpoints=endpoints)


async def start_engine(engine: FakeEngine) -> GrpcServiceRunner:
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.5)
    servicer = InferenceServicer(engine, server_name="fake-engine")
    runner.add(lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))
    await runner.start()
    await runner.set_serving(True)
    return runner


@pytest.fixture(scope="package")
async def mesh(model_path) -> Mesh:
    models = [
        TokenizerModel(
            name, load_tokenizer(model_path(folder)), ModelOptions(task=task, max_model_len=limit)
        )
        for name, (task, folder, limit) in MODELS.items()
    ]
    # The fake engine holds the tokenizers as an HF engine does: text can go straight to it.
    engine = FakeEngine(
        [ready(name, task, limit) for name, (task, _, limit) in MODELS.items()],
        text_models={model.name: model for model in models if not model.options.task.is_generative},
    )
    engine_runner = await start_engine(engine)
    core = TokenizerCore(models, workers=2)
    servicer = TokenizerServicer()
    servicer.attach(core)
    tokenizer_runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.5)
    tokenizer_runner.add(
        lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    )
    await tokenizer_runner.start()
    await tokenizer_runner.set_serving(True)
    yield Mesh(engine, engine_runner, tokenizer_runner, core)
    await engine_runner.server.stop(0)
    await tokenizer_runner.server.stop(0)
    core.close()


@asynccontextmanager
async def serve_gateway(
    settings: GatewaySettings,
    plan: MeshPlan,
    *,
    wait: bool = True,
    prepare: Callable[[FastAPI], None] | None = None,
):
    """The app on a real socket (uvicorn in this loop); yields (base_url, app). `prepare`
    sees the app before it starts."""
    app = build_app(settings, plan)
    if prepare is not None:
        prepare(app)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.ensure_future(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done():
            task.result()
        assert asyncio.get_running_loop().time() < deadline, "gateway did not start"
        await asyncio.sleep(0.01)
    if wait:
        assert await app.state.gateway.routes.wait_ready(10), "mesh not ready"
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="package")
async def gateway(mesh):
    async with serve_gateway(GatewaySettings(), mesh.plan()) as (url, app):
        yield url, app


@pytest.fixture
async def http(gateway):
    url, _ = gateway
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client
