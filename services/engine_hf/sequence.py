"""One generation request and its sequences, as the scheduler's worker thread sees them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from services.common.engine import GenerateDelta, GenerateRequest
from services.common.tracing import EngineRequestTrace
from services.engine_hf.detok import TextTracker
from services.engine_hf.sampling import SamplingState


@dataclass
class Sequence:
    request: ActiveRequest
    index: int
    sampler: SamplingState
    text: TextTracker
    last_token: int = -1
    finished: bool = False

    def append(
        self, token: int, *, eos_ids: frozenset[int], context_limit: int | None
    ) -> str | None:
        """Record one token; the finish reason when the sequence ends with it.

        EOS and `stop_token_ids` end it with "stop" (their text is kept only with
        `include_stop_str_in_output`); so does a stop string in the text (already cut
        there); `max_tokens` or the context limit end it with "length".
        """
        params = self.sampler.params
        self.sampler.accept(token)
        self.last_token = token
        count = len(self.sampler.output_ids)
        stop_token = (token in eos_ids and not params.ignore_eos) or token in params.stop_token_ids
        reason: str | None
        if stop_token:
            if params.include_stop_str_in_output:
                self.text.add(token)
            reason = "stop"
        elif self.text.add(token):
            self.finished = True
            return "stop"
        elif count >= self.request.max_tokens:
            reason = "length"
        elif context_limit is not None and len(self.request.prompt_ids) + count >= context_limit:
            reason = "length"
        else:
            return None
        if self.text.finish():
            reason = "stop"
        self.finished = True
        return reason

    def delta(
        self,
        tokens: list[int],
        finish: str | None,
        logprobs: list[float] | None = None,
        tops: list[dict[int, float]] | None = None,
    ) -> GenerateDelta:
        """What is new since the last delta (all remaining text once `finish` is set)."""
        return GenerateDelta(
            index=self.index,
            text=self.text.take(final=finish is not None),
            token_ids=tokens,
            num_input_tokens=len(self.request.prompt_ids),
            num_output_tokens=len(self.sampler.output_ids),
            finish_reason=finish,
            logprobs=logprobs,
            top_logprobs=tops,
        )


@dataclass
class ActiveRequest:
    """A submitted request: its sequences (n of them) and the queue its deltas go to."""

    request: GenerateRequest
    prompt_ids: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    adapter: str | None = None
    grammar: Any = None  # the compiled grammar of its structured output, if any
    submitted: float = field(default_factory=time.monotonic)
    sequences: list[Sequence] = field(default_factory=list)
    first_token_seen: bool = False
    last_token_at: float = 0.0
    aborted: bool = False
    # The request's trace (its queue time ends when admitted), when tracing is on.
    trace: EngineRequestTrace | None = None

    def send(self, item: GenerateDelta | BaseException) -> None:
        """Thread-safe: hand a delta (or the request's failure) to the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone
            pass

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def done(self) -> bool:
        return all(seq.finished for seq in self.sequences)
