"""A deterministic in-process `Engine` for servicer, tokenizer and gateway tests.

Generation: token i of sequence k is `fake_token(prompt ids, k, i)`, its text " w<token>"
(a text prompt has no ids: `fake_token([], k, i)`); `stop` strings end a sequence ("stop"),
`max_tokens` does ("length"). Logprobs, when asked for, are -0.1 * (i + 1) with two
alternatives. Encoders: texts answer `[len(text), 1.0]` rows (plus a "text" output the
servicer must filter), query/document pairs the documents' lengths, token tensors
deterministic raw outputs per task. A model given a tokenizer-service model in `text_models`
answers text as an HF engine does instead: tokenized as the tokenizer's preprocess does, the
raw outputs of its token tensors, post-processed into `output-0` (with `num_input_tokens`
when asked), so text sent straight to it and text sent through the tokenizer agree.
Adapters load as generative models of the first one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.codec import as_bytes_array
from services.common.encoder_tensors import TOKEN_COUNT_OUTPUT, token_counts_wanted
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


def fake_token(prompt: list[int], sequence: int, step: int) -> int:
    return (sum(prompt) + 7 * sequence + step) % 997 + 3


def fake_text(prompt: list[int], count: int, sequence: int = 0) -> str:
    """The text of the first `count` tokens of a sequence."""
    return "".join(f" w{fake_token(prompt, sequence, i)}" for i in range(count))


def ready(name: str, task: Task, max_model_len: int | None = None) -> ModelInfo:
    return ModelInfo(name=name, task=task, state=ModelState.READY, max_model_len=max_model_len)


@dataclass
class FakeEngine:
    infos: list[ModelInfo]
    token_delay: float = 0.0
    requests: list[GenerateRequest] = field(default_factory=list)
    encodes: list[EncodeRequest] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)
    fail_with: Exception | None = None
    #: model name → the tokenizer service's `TokenizerModel` of it (text answered as above)
    text_models: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    def models(self) -> list[ModelInfo]:
        return self.infos

    def healthy(self) -> bool:
        return True

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        if self.fail_with is not None:
            raise self.fail_with
        if request.sampling.extra:
            raise InvalidArgument(
                f"sampling parameter '{sorted(request.sampling.extra)[0]}' is not supported"
            )
        self.requests.append(request)
        prompt = request.prompt_token_ids or []
        prompt_length = len(request.prompt_token_ids or (request.prompt or "").split())
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
                    top = (
                        [{token: -0.1 * (step + 1), token + 1: -2.5}] if sampling.logprobs else None
                    )
                    yield GenerateDelta(
                        index=k,
                        text=text,
                        token_ids=[token],
                        num_input_tokens=prompt_length,
                        num_output_tokens=step + 1,
                        finish_reason=reason,
                        logprobs=logprobs,
                        top_logprobs=top,
                    )
                await asyncio.sleep(self.token_delay)
                if all(done):
                    break
        finally:
            self.running.discard(request.request_id)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        self.encodes.append(request)
        model = self.text_models.get(request.model)
        if model is not None and request.tensors is None:
            first = [q for q, _ in request.pairs] if request.pairs else list(request.texts or ())
            second = [d for _, d in request.pairs] if request.pairs else None
            tensors = model.preprocess(first, second)
            raw = self._raw_outputs(request.model, tensors)
            outputs = {"output-0": model.postprocess(raw, tensors, request.options)}
            if token_counts_wanted(request.options):
                outputs[TOKEN_COUNT_OUTPUT] = tensors["attention_mask"].sum(axis=1)
            return EncodeResult(outputs)
        if request.pairs is not None:
            return EncodeResult(
                {"output-0": np.array([len(d) for _, d in request.pairs], np.float32)}
            )
        if request.tensors is None:
            rows = np.array([[len(t), 1.0] for t in request.texts], np.float32)
            return EncodeResult({"output-0": rows, "text": as_bytes_array(request.texts)})
        return EncodeResult(self._raw_outputs(request.model, request.tensors))

    def _raw_outputs(self, name: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        info = next(i for i in self.infos if i.name == name)
        ids = tensors["input_ids"].astype(np.float32)
        n, length = ids.shape
        if info.task is Task.TEXT_EMBEDDING:
            hidden = np.stack([np.sin(ids * (h + 1) / 50.0) for h in range(8)], axis=-1)
            return {"last_hidden_state": hidden.astype(np.float32)}
        if info.task is Task.SEQUENCE_CLASSIFICATION:
            logits = np.stack([ids.sum(axis=1) % 5, (ids.sum(axis=1) + 2) % 5], axis=-1)
            return {"logits": logits.astype(np.float32)}
        if info.task is Task.TOKEN_CLASSIFICATION:
            logits = np.stack([(ids + c) % 3 for c in range(3)], axis=-1)
            return {"logits": logits.astype(np.float32)}
        if info.task is Task.FILL_MASK:
            logits = np.zeros((n, length, 64), dtype=np.float32)
            logits[:, :, 40] = 1.0  # always predicts token 40
            return {"logits": logits}
        if info.task is Task.RERANK:
            return {"logits": (ids.sum(axis=1, keepdims=True) % 7 - 3).astype(np.float32)}
        raise InvalidArgument(f"fake engine: no encoder for {info.task.value}")

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def load_model(self, name: str) -> None:
        if not any(i.name == name for i in self.infos):
            raise NotFound(f"unknown model '{name}'")

    async def unload_model(self, name: str) -> None:
        info = next(i for i in self.infos if i.name == name)
        info.state, info.reason = ModelState.UNAVAILABLE, "unloaded"

    async def load_adapter(self, name: str, path: str) -> None:
        base = next(i.name for i in self.infos if i.task is Task.TEXT_GENERATION)
        self.infos.append(ModelInfo(name, Task.TEXT_GENERATION, ModelState.READY, base_model=base))

    async def unload_adapter(self, name: str) -> None:
        adapter = next((i for i in self.infos if i.name == name and i.base_model is not None), None)
        if adapter is None:
            raise NotFound(f"no adapter '{name}'")
        self.infos.remove(adapter)
