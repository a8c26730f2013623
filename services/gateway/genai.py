"""One inference request as the OpenTelemetry GenAI conventions see it: its span and its metrics.

`AccessMiddleware` opens a `GenAIRequest` per HTTP request (`begin`); the inference routes fill it:
`genai_request` at the start (operation, model, max_tokens, temperature), `first_token` when the
engines answer first, `genai_response` once the answer is complete (usage, finish reasons). With
tracing on, the request span is renamed `<operation> <model>` (`chat smollm`) and carries
`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.request.max_tokens`,
`gen_ai.request.temperature`, `gen_ai.usage.input_tokens`/`output_tokens` and
`gen_ai.response.finish_reasons`. When the request ends, `GatewayMetrics.observe_genai` records
the `gen_ai.server.*` and `gen_ai.client.token.usage` histograms from it.

The record is a mutable object shared through a context variable, so what the route sets is seen
by the middleware whatever task or context copy the route ran in.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from services.common import tracing


@dataclass
class GenAIRequest:
    started: float = field(default_factory=time.monotonic)
    operation: str | None = None
    model: str | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


_current: contextvars.ContextVar[GenAIRequest | None] = contextvars.ContextVar(
    "genai_request", default=None
)


def begin() -> tuple[GenAIRequest, contextvars.Token]:
    record = GenAIRequest()
    return record, _current.set(record)


def end(token: contextvars.Token) -> None:
    _current.reset(token)


def genai_request(
    operation: str,
    model: str,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> None:
    """An inference route starts: `operation` is GenAI's (`chat`, `text_completion`, …)."""
    record = _current.get()
    if record is not None:
        record.operation, record.model = operation, model
    if not tracing.enabled():
        return
    span = trace.get_current_span()
    span.update_name(f"{operation} {model}")
    span.set_attribute("gen_ai.operation.name", operation)
    span.set_attribute("gen_ai.request.model", model)
    if max_tokens is not None:
        span.set_attribute("gen_ai.request.max_tokens", max_tokens)
    if temperature is not None:
        span.set_attribute("gen_ai.request.temperature", temperature)


def first_token() -> None:
    record = _current.get()
    if record is not None and record.first_token_at is None:
        record.first_token_at = time.monotonic()


def genai_response(
    input_tokens: int, output_tokens: int | None = None, finish_reasons: Sequence[str] = ()
) -> None:
    """The answer is complete: its usage and finish reasons."""
    record = _current.get()
    if record is not None:
        record.finished_at = time.monotonic()
        record.input_tokens, record.output_tokens = input_tokens, output_tokens
    if not tracing.enabled():
        return
    span = trace.get_current_span()
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))
