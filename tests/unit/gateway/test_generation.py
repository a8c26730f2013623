"""Stream merging and delta coalescing (the response decoding is tested with `llm_tensors`)."""

from __future__ import annotations

import asyncio

import pytest

from services.common.engine import GenerateDelta
from services.common.errors import InvalidArgument
from services.gateway.openai import generation as gen


def delta(text: str, token: int, *, index: int = 0, reason: str | None = None) -> GenerateDelta:
    return GenerateDelta(index, text, [token], 3, token, reason, logprobs=[-1.0])


async def test_merge_batches_what_arrived_while_the_consumer_was_busy():
    gate = asyncio.Event()

    async def fast():
        for i in range(3):
            yield delta(f"a{i}", i)
        gate.set()

    async def slow():
        await gate.wait()
        yield delta("b", 9, reason="stop")

    batches = [batch async for batch in gen.merge([fast(), slow()])]
    assert [(p, d.text) for batch in batches for p, d in batch] == [
        (0, "a0"),
        (0, "a1"),
        (0, "a2"),
        (1, "b"),
    ]
    assert len(batches) <= 2  # the three that arrived together came as one batch
    combined = gen.combine(
        gen.combine(delta("x", 1), delta("y", 2)), delta("z", 3, reason="length")
    )
    assert (
        combined.text,
        combined.token_ids,
        combined.finish_reason,
        combined.num_output_tokens,
    ) == ("xyz", [1, 2, 3], "length", 3)
    assert combined.logprobs == [-1.0, -1.0, -1.0] and combined.top_logprobs is None


async def test_merge_passes_errors_after_the_items_before_them():
    async def failing():
        yield delta("ok", 1)
        raise InvalidArgument("bad")

    seen = []
    with pytest.raises(InvalidArgument):
        async for batch in gen.merge([failing()]):
            seen += batch
    assert [d.text for _, d in seen] == ["ok"]
