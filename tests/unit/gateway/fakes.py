"""A deterministic fake `Engine` for gateway tests, served by the real OIP servicer.

Generation: token i of sequence k is `(sum(prompt) + 7 * k + i) % 997 + 3`, its
text " w<token>"; `stop` strings end a sequence ("stop"), `max_tokens` does
("length"). Logprobs are -0.1 * (i + 1) with two alternatives.
Encoders take token tensors and answer deterministic raw outputs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np

from services.common.engine import (
    EncodeRequest,
    EncodeResult,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Task,
)
from services.common.errors import InvalidArgument


def fake_token(prompt: list[int], sequence: int, step: int) -> int:
    return (sum(prompt) + 7 * sequence + step) % 997 + 3


@dataclass
class FakeEngine:
    infos: list[ModelInfo]
    token_delay: float = 0.0
    requests: list[GenerateRequest] = field(default_factory=list)
    encodes: list[EncodeRequest] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)
    fail_with: Exception | None = None

    def models(self) -> list[ModelInfo]:
        return self.infos

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        if self.fail_with is not None:
            raise self.fail_with
        if request.sampling.extra:
            raise InvalidArgument(f"sampling parameter '{sorted(request.sampling.extra)[0]}' is not supported")
        self.requests.append(request)
        prompt = request.prompt_token_ids or []
        sampling = request.sampling
        self.running.add(request.request_id)
        try:
            texts = ["" for _ in range(sampling.n)]
            done = [False] * sampling.n
            limit = sampling.max_tokens or 16
            for step in range(limit):
                for k in range(sampling.n):
                    if done[k]:
                        continue
                    token = fake_token(prompt, k, step)
                    text = f" w{token}"
                    texts[k] += text
                    reason = None
                    hit = next((s for s in sampling.stop if s in texts[k]), None)
                    if hit is not None:
                        text = text[: max(0, len(text) - (len(texts[k]) - texts[k].index(hit)))]
                        reason = "stop"
                    elif step == limit - 1:
                        reason = "length"
                    done[k] = reason is not None
                    logprobs = [-0.1 * (step + 1)] if sampling.logprobs is not None else None
                    top = [{token: -0.1 * (step + 1), token + 1: -2.5}] if sampling.logprobs else None
                    yield GenerateDelta(
                        index=k, text=text, token_ids=[token], num_input_tokens=len(prompt),
                        num_output_tokens=step + 1, finish_reason=reason, logprobs=logprobs, top_logprobs=top,
                    )
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                else:
                    await asyncio.sleep(0)
                if all(done):
                    break
        finally:
            self.running.discard(request.request_id)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        self.encodes.append(request)
        info = next(i for i in self.infos if i.name == request.model)
        if request.tensors is None:
            raise InvalidArgument("the fake engine only takes token tensors")
        ids = request.tensors["input_ids"].astype(np.float32)
        n, length = ids.shape
        if info.task is Task.TEXT_EMBEDDING:
            hidden = np.stack([np.sin(ids * (h + 1) / 50.0) for h in range(8)], axis=-1)
            return EncodeResult({"last_hidden_state": hidden.astype(np.float32)})
        if info.task is Task.SEQUENCE_CLASSIFICATION:
            logits = np.stack([ids.sum(axis=1) % 5, (ids.sum(axis=1) + 2) % 5], axis=-1)
            return EncodeResult({"logits": logits.astype(np.float32)})
        if info.task is Task.TOKEN_CLASSIFICATION:
            logits = np.stack([(ids + c) % 3 for c in range(3)], axis=-1)
            return EncodeResult({"logits": logits.astype(np.float32)})
        if info.task is Task.FILL_MASK:
            logits = np.zeros((n, length, 64), dtype=np.float32)
            logits[:, :, 40] = 1.0  # always predicts token 40
            return EncodeResult({"logits": logits})
        if info.task is Task.RERANK:
            return EncodeResult({"logits": (ids.sum(axis=1, keepdims=True) % 7 - 3).astype(np.float32)})
        raise InvalidArgument(f"fake engine: no encoder for {info.task.value}")

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        raise InvalidArgument("no adapters")

    async def unload_adapter(self, name: str) -> None:
        raise InvalidArgument("no adapters")

    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def ready(name: str, task: Task, max_model_len: int | None = None) -> ModelInfo:
    return ModelInfo(name=name, task=task, state=ModelState.READY, max_model_len=max_model_len)
