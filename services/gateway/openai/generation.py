"""Pieces shared by completions and chat: sampling parameters, per-choice state,
merging concurrent engine streams, and OpenAI logprobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, TypeVar

from services.common.engine import SamplingParams
from services.common.llm_tensors import check_sampling
from services.gateway.grpc_clients import EngineDelta
from services.gateway.openai.protocol import (
    CompletionLogprobs,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
)

T = TypeVar("T")

# Request fields that are `SamplingParams` fields of the same name and meaning.
_SAMPLING_FIELDS = (
    "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
    "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids", "skip_special_tokens",
    "include_stop_str_in_output",
)


def sampling_params(
    request: SamplingFields, *, max_tokens: int | None, logprobs: int | None
) -> SamplingParams:
    """The engine's sampling parameters for an OpenAI request, range-checked (400 naming the
    parameter). A field the request leaves out keeps vLLM's default."""
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
    params = SamplingParams(n=request.n, logprobs=logprobs, extra=extra, **given)
    check_sampling(params)
    return params


@dataclass
class Choice:
    """One output sequence as it accumulates."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    started: bool = False

    def add(self, delta: EngineDelta) -> None:
        self.text += delta.text
        self.token_ids += delta.token_ids
        if delta.logprobs:
            self.logprobs += delta.logprobs
        if delta.num_output_tokens is not None:
            self.num_output_tokens = delta.num_output_tokens
        else:
            self.num_output_tokens = len(self.token_ids)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason


def combine(first: EngineDelta, then: EngineDelta) -> EngineDelta:
    """Two consecutive deltas of one sequence as one."""
    logprobs = (first.logprobs or []) + (then.logprobs or []) if first.logprobs or then.logprobs else None
    return EngineDelta(
        index=first.index,
        text=first.text + then.text,
        token_ids=first.token_ids + then.token_ids,
        finish_reason=then.finish_reason or first.finish_reason,
        num_input_tokens=then.num_input_tokens if then.num_input_tokens is not None else first.num_input_tokens,
        num_output_tokens=then.num_output_tokens if then.num_output_tokens is not None else first.num_output_tokens,
        logprobs=logprobs,
    )


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[list[tuple[int, T]]]:
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


def logprob_ids(entries: list[dict[str, Any]]) -> list[int]:
    """Every token id named in engine logprobs entries (sampled and alternatives)."""
    ids: list[int] = []
    for entry in entries:
        ids.append(int(entry["token_id"]))
        ids += [int(k) for k in (entry.get("top_logprobs") or {})]
    return ids


def _top(entry: dict[str, Any], names: dict[int, str], limit: int) -> list[tuple[str, float]]:
    alternatives = sorted(((int(k), float(v)) for k, v in (entry.get("top_logprobs") or {}).items()), key=lambda kv: -kv[1])
    return [(names.get(k, ""), v) for k, v in alternatives[:limit]]


def completion_logprobs(
    entries: list[dict[str, Any]], names: dict[int, str], limit: int, *, offset: int = 0
) -> CompletionLogprobs:
    out = CompletionLogprobs()
    position = offset
    for entry in entries:
        token = names.get(int(entry["token_id"]), "")
        out.tokens.append(token)
        out.token_logprobs.append(entry.get("logprob"))
        out.top_logprobs.append(dict(_top(entry, names, limit)) if limit else None)
        out.text_offset.append(position)
        position += len(token)
    return out


def chat_logprobs(entries: list[dict[str, Any]], names: dict[int, str], limit: int) -> list[TokenLogprob]:
    out = []
    for entry in entries:
        token = names.get(int(entry["token_id"]), "")
        out.append(
            TokenLogprob(
                token=token,
                logprob=float(entry.get("logprob") if entry.get("logprob") is not None else float("-inf")),
                bytes=list(token.encode("utf-8")),
                top_logprobs=[
                    TopLogprob(token=t, logprob=v, bytes=list(t.encode("utf-8"))) for t, v in _top(entry, names, limit)
                ],
            )
        )
    return out
