"""Shared helpers for the engine_hf unit tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from services.common.engine import GenerateDelta, GenerateRequest, SamplingParams


@dataclass
class Generation:
    text: str
    ids: list[int]
    deltas: list[GenerateDelta]

    @property
    def finish_reason(self) -> str | None:
        return self.deltas[-1].finish_reason if self.deltas else None


def request(
    model: str, prompt: str | list[int], request_id: str | None = None, **sampling
) -> GenerateRequest:
    sampling.setdefault("temperature", 0.0)
    params = SamplingParams(**sampling)
    rid = request_id or uuid.uuid4().hex
    if isinstance(prompt, str):
        return GenerateRequest(rid, model, params, prompt=prompt)
    return GenerateRequest(rid, model, params, prompt_token_ids=list(prompt))


async def collect(engine, req: GenerateRequest, index: int = 0) -> Generation:
    deltas = [d async for d in engine.generate(req)]
    mine = [d for d in deltas if d.index == index]
    return Generation("".join(d.text for d in mine), [t for d in mine for t in d.token_ids], mine)
