"""A deterministic in-process `Engine` for servicer and gateway tests (the model is not the point)."""

from __future__ import annotations

import asyncio

import numpy as np

from services.common.codec import as_bytes_array
from services.common.engine import (
    EncodeRequest,
    EncodeResult,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Task,
)
from services.common.errors import InvalidArgument, NotFound


class FakeEngine:
    """Generation echoes words "w0 w1 ..." one per step; encoders return lengths."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self._models = {
            "gen": ModelInfo("gen", Task.TEXT_GENERATION, ModelState.READY, max_model_len=64),
            "emb": ModelInfo("emb", Task.TEXT_EMBEDDING, ModelState.READY),
            "rank": ModelInfo("rank", Task.RERANK, ModelState.READY),
            "cold": ModelInfo("cold", Task.TEXT_GENERATION, ModelState.LOADING),
        }

    def models(self):
        return list(self._models.values())

    def healthy(self):
        return True

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def generate(self, request: GenerateRequest):
        params = request.sampling
        if params.extra:
            raise InvalidArgument(f"sampling parameter '{next(iter(params.extra))}' is not supported")
        prompt_len = len(request.prompt_token_ids or (request.prompt or "").split())
        self.running.add(request.request_id)
        try:
            for index in range(params.n):
                for step in range(params.max_tokens or 16):
                    if self.step_seconds:
                        await asyncio.sleep(self.step_seconds)
                    last = step == (params.max_tokens or 16) - 1
                    yield GenerateDelta(
                        index=index,
                        text=f" w{step}",
                        token_ids=[100 + step],
                        num_input_tokens=prompt_len,
                        num_output_tokens=step + 1,
                        finish_reason="length" if last else None,
                        logprobs=[-0.5],
                    )
        finally:
            self.running.discard(request.request_id)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        if request.tensors is not None:
            ids = request.tensors["input_ids"]
            return EncodeResult({"embeddings": ids.astype(np.float32)})
        if request.pairs is not None:
            return EncodeResult({"output-0": np.array([len(d) for _, d in request.pairs], np.float32)})
        return EncodeResult(
            {"output-0": np.array([[len(t), 1.0] for t in request.texts], np.float32),
             "text": as_bytes_array(request.texts)}
        )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        self._models[name] = ModelInfo(name, Task.TEXT_GENERATION, ModelState.READY, base_model="gen")

    async def unload_adapter(self, name: str) -> None:
        if self._models.get(name) is None or self._models[name].base_model is None:
            raise NotFound(f"no adapter '{name}'")
        del self._models[name]
