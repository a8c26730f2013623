"""Stream merging and delta coalescing, and the engine-response fast path."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from services.common.codec import InferResponse, Tensor, as_bytes_array
from services.common.converters import infer_response_from_pb, infer_response_to_pb
from services.common.errors import InvalidArgument
from services.gateway.grpc_clients import EngineDelta, _delta, _raw_delta
from services.gateway.openai import generation as gen


def delta(text: str, token: int, *, index: int = 0, reason: str | None = None) -> EngineDelta:
    return EngineDelta(index, text, [token], reason, 3, token, [{"token_id": token, "logprob": -1.0}])


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
    assert [(p, d.text) for batch in batches for p, d in batch] == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b")]
    assert len(batches) <= 2  # the three that arrived together came as one batch
    combined = gen.combine(gen.combine(delta("x", 1), delta("y", 2)), delta("z", 3, reason="length"))
    assert (combined.text, combined.token_ids, combined.finish_reason, combined.num_output_tokens) == ("xyz", [1, 2, 3], "length", 3)
    assert [e["token_id"] for e in combined.logprobs] == [1, 2, 3]


async def test_merge_passes_errors_after_the_items_before_them():
    async def failing():
        yield delta("ok", 1)
        raise InvalidArgument("bad")

    seen = []
    with pytest.raises(InvalidArgument):
        async for batch in gen.merge([failing()]):
            seen += batch
    assert [d.text for _, d in seen] == ["ok"]


def test_fast_path_decodes_like_the_codec():
    outputs = [
        Tensor("text_output", "BYTES", as_bytes_array(["héllo"])),
        Tensor("output_ids", "INT64", np.array([42, 7], dtype=np.int64)),
        Tensor("finish_reason", "BYTES", as_bytes_array(["stop"])),
        Tensor("num_input_tokens", "INT64", np.array([5], dtype=np.int64)),
        Tensor("num_output_tokens", "INT64", np.array([2], dtype=np.int64)),
        Tensor("logprobs", "BYTES", as_bytes_array([json.dumps([{"token_id": 42, "logprob": -0.5}])])),
        Tensor("sequence_index", "INT64", np.array([1], dtype=np.int64)),
    ]
    raw = infer_response_to_pb(InferResponse("m", outputs), raw=True)
    assert _raw_delta(raw) == _delta(infer_response_from_pb(raw))
    typed = infer_response_to_pb(InferResponse("m", outputs), raw=False)
    assert _raw_delta(typed) is None  # typed contents take the codec path
