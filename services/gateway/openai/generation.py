"""Pieces shared by completions and chat: sampling parameters, per-choice state,
merging concurrent engine streams, and OpenAI logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.common.engine import GenerateDelta, SamplingParams
from services.common.llm_tensors import check_sampling
from services.gateway.openai.protocol import (
    CompletionLogprobs,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
)

T = TypeVar("T")

# Request fields that are `SamplingParams` fields of the same name and meaning.
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "skip_special_tokens",
    "include_stop_str_in_output",
)


def sampling_params(
    request: SamplingFields,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    structured: dict[str, Any] | None = None,
) -> SamplingParams:
    """The engine's sampling parameters for an OpenAI request, range-checked (400 naming the
    parameter). A field the request leaves out keeps vLLM's default. `structured`: the
    `structured_outputs` constraint (openai/structured.py)."""
    given: dict[str, Any] = {
        name: value for name in _SAMPLING_FIELDS if (value := getattr(request, name)) is not None
    }
    if max_tokens is not None:
        given["max_tokens"] = max_tokens
    if request.stop is not None:
        given["stop"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    extra: dict[str, object] = {}
    if request.logit_bias is not None:
        extra["logit_bias"] = request.logit_bias
    if structured is not None:
        extra["structured_outputs"] = structured
    params = SamplingParams(n=request.n, logprobs=logprobs, extra=extra, **given)
    check_sampling(params)
    return params


@dataclass
class Choice:
    """One output sequence as it accumulates (`logprobs` / `top_logprobs` per token)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    started: bool = False

    def add(self, delta: GenerateDelta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs or []
        self.top_logprobs += delta.top_logprobs or []
        # A response without the count (not the last one) leaves it to the ids so far.
        self.num_output_tokens = delta.num_output_tokens or len(self.token_ids)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason


def _joined(first: list[T] | None, then: list[T] | None) -> list[T] | None:
    return None if first is None and then is None else (first or []) + (then or [])


def combine(first: GenerateDelta, then: GenerateDelta) -> GenerateDelta:
    """Two consecutive deltas of one sequence as one."""
    return GenerateDelta(
        index=first.index,
        text=first.text + then.text,
        token_ids=first.token_ids + then.token_ids,
        finish_reason=then.finish_reason or first.finish_reason,
        num_input_tokens=then.num_input_tokens or first.num_input_tokens,
        num_output_tokens=then.num_output_tokens or first.num_output_tokens,
        logprobs=_joined(first.logprobs, then.logprobs),
        top_logprobs=_joined(first.top_logprobs, then.top_logprobs),
    )


async def merge(
    streams: list[AsyncIterator[T]],
) -> AsyncGenerator[list[tuple[int, T]], None]:
    """Items of several streams as they come, tagged with the stream's position, in
    batches: everything that arrived while the consumer was busy comes together,
    so a loaded gateway writes fewer, larger chunks instead of falling behind.
    Closing the merged iterator cancels every stream. A lone stream is read
    directly, without a task and a queue per item: its engine already sends
    what the gateway fell behind on as one response (`coalesce_deltas`)."""
    if len(streams) == 1:
        stream = streams[0]
        try:
            async for item in stream:
                yield [(0, item)]
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(position: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((position, item))
            queue.put_nowait((position, done))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((position, error))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            arrived = [await queue.get()]
            while not queue.empty():
                arrived.append(queue.get_nowait())
            batch: list[tuple[int, T]] = []
            for position, item in arrived:
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    if batch:
                        yield batch
                    raise item
                else:
                    batch.append((position, item))
            if batch:
                yield batch
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


#: Tokens with their logprobs: one delta, or a choice so far.
Logprobs = GenerateDelta | Choice


def has_logprobs(delta: GenerateDelta) -> bool:
    """Whether a delta brings tokens with logprobs to report."""
    return delta.logprobs is not None and bool(delta.token_ids)


def _entries(source: Logprobs) -> Iterator[tuple[int, float | None, dict[int, float]]]:
    """(token id, its logprob or None, its alternatives) per token."""
    logprobs, top = source.logprobs or [], source.top_logprobs or []
    for i, token in enumerate(source.token_ids):
        yield token, logprobs[i] if i < len(logprobs) else None, top[i] if i < len(top) else {}


def logprob_ids(source: Logprobs) -> list[int]:
    """Every token id the logprobs name (sampled and alternatives)."""
    ids: list[int] = []
    for token, _, alternatives in _entries(source):
        ids.append(token)
        ids += list(alternatives)
    return ids


def _top(
    alternatives: dict[int, float], names: dict[int, str], limit: int
) -> list[tuple[str, float]]:
    ranked = sorted(alternatives.items(), key=lambda kv: -kv[1])
    return [(names.get(k, ""), v) for k, v in ranked[:limit]]


def completion_logprobs(
    source: Logprobs, names: dict[int, str], limit: int, *, offset: int = 0
) -> CompletionLogprobs:
    out = CompletionLogprobs()
    position = offset
    for token_id, logprob, alternatives in _entries(source):
        token = names.get(token_id, "")
        out.tokens.append(token)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(dict(_top(alternatives, names, limit)) if limit else None)
        out.text_offset.append(position)
        position += len(token)
    return out


def chat_logprobs(source: Logprobs, names: dict[int, str], limit: int) -> list[TokenLogprob]:
    out = []
    for token_id, logprob, alternatives in _entries(source):
        token = names.get(token_id, "")
        out.append(
            TokenLogprob(
                token=token,
                logprob=float(logprob if logprob is not None else float("-inf")),
                bytes=list(token.encode("utf-8")),
                top_logprobs=[
                    TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8")))
                    for t, v in _top(alternatives, names, limit)
                ],
            )
        )
    return out
