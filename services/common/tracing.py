"""OpenTelemetry tracing of every service, configured once from the standard `OTEL_*` environment.

`configure(service)` runs once, in each service's `__main__`. Tracing is on only when an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`); then
spans go to it over OTLP/gRPC in batches (`OTEL_BSP_*` tune the batching, `OTEL_EXPORTER_OTLP_*`
the exporter, as the SDK reads them). The service name is `OTEL_SERVICE_NAME`, else
`hfmesh-<service>`. The sampler is `OTEL_TRACES_SAMPLER` when set (the SDK's names), otherwise
parent-based trace-id ratio with `OTEL_TRACES_SAMPLER_ARG` (default 1.0): a caller's sampling
decision in `traceparent` is followed, new traces are sampled at the ratio.

Without an endpoint nothing is installed: no provider, no interceptor, no middleware, and every
hook below returns at its first test of `_tracer`, so tracing costs nothing measurable.

Propagation is W3C trace context (`traceparent`, `tracestate`), carried in gRPC metadata exactly as
in HTTP headers: `with_trace_context` adds it to a call's metadata, `TracingInterceptor` reads it
on the server and opens that RPC's server span (none for `grpc.health.v1` and reflection).
Propagation is done here rather than with the contrib gRPC instrumentation: the gateway's channels
are made per replica and replaced as replicas come and go, while every outgoing call already takes
its metadata from one place (`CallContext.metadata`); and off means no interceptor at all.

Spans of one request, each the child of the previous hop's: the gateway's HTTP request span (named
per the GenAI conventions, `services.gateway.tracing`) → per gRPC call the callee's server span →
inside it the tokenizer's operation span (`render`, `tokenize`, `preprocess`, `postprocess`,
`detokenize`) or the engine's request span (`engine_request`: queue time, time to first token,
output tokens; events `first_token` and `finish`). A span ends with error status when its work
raised: rejected (the error's gRPC code), failed, or cancelled (`error.type` = `cancelled`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.engine import GenerateDelta
from services.common.errors import HfmeshError
from services.common.interceptors import UNOBSERVED, aborted_code, observed
from services.common.logs import REQUEST_ID_HEADER

if TYPE_CHECKING:  # the SDK is imported only when tracing is turned on
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

logger = logging.getLogger(__name__)

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
REQUEST_ID_ATTRIBUTE = "hfmesh.request_id"

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def _sampler(env: Mapping[str, str]):
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if env.get("OTEL_TRACES_SAMPLER"):
        return None  # the SDK reads OTEL_TRACES_SAMPLER(_ARG) itself
    ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG") or 1.0)
    return ParentBased(TraceIdRatioBased(ratio))


def configure(
    service: str,
    env: Mapping[str, str] | None = None,
    *,
    processor: SpanProcessor | None = None,
) -> bool:
    """Turn tracing on when an OTLP endpoint is set (or a `processor` is given); True when on."""
    global _tracer, _provider
    env = os.environ if env is None else env
    if processor is None:
        if not any(env.get(name) for name in ENDPOINT_ENVS):
            return False
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter())
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    name = env.get("OTEL_SERVICE_NAME") or f"hfmesh-{service}"
    _provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}), sampler=_sampler(env)
    )
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("hfmesh")
    logger.info("tracing on: service %s", name)
    return True


def shutdown() -> None:
    """Flush and stop (also done at interpreter exit); tracing is off afterwards."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def enabled() -> bool:
    return _tracer is not None


# -- propagation --------------------------------------------------------------


def with_trace_context(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current span's `traceparent` (unchanged when tracing is off)."""
    if _tracer is None:
        return metadata
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return (*metadata, *carrier.items()) if carrier else metadata


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The remote parent named by `traceparent` in `headers` (lower-case keys)."""
    return _PROPAGATOR.extract(headers)


# -- spans --------------------------------------------------------------------


def fail(span: Span, error: BaseException) -> None:
    """Error status for a span whose work raised `error` (cancellation included)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        span.set_attribute("error.type", "cancelled")
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif isinstance(error, HfmeshError):
        span.set_attribute("error.type", error.grpc_code.name)
        span.set_status(Status(StatusCode.ERROR, error.message))
    else:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))


_OFF: AbstractContextManager[Any] = nullcontext()


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
) -> AbstractContextManager[Span | None]:
    """A span current for the block (None when tracing is off); error status if it raises."""
    if _tracer is None:
        return _OFF
    return _span(_tracer, name, attributes, kind, parent)


@contextmanager
def _span(
    tracer: trace.Tracer,
    name: str,
    attributes: Mapping[str, Any] | None,
    kind: SpanKind,
    parent: otel_context.Context | None,
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as error:
            fail(current, error)
            raise


class EngineRequestTrace:
    """What an engine's request span records: set from the servicer's task and (`scheduled`)
    from an engine's scheduler thread; written to the span when the request ends."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.started = time.monotonic()
        self.scheduled_at: float | None = None
        self.queue_time: float | None = None
        self.first_token_at: float | None = None
        self.input_tokens = 0
        self.output_tokens: dict[int, int] = {}

    def scheduled(self) -> None:
        """The engine admitted the request to a batch (ends its queue time)."""
        if self.scheduled_at is None:
            self.scheduled_at = time.monotonic()

    def queued(self, seconds: float) -> None:
        """The queue time as an engine measured it on its own clock (vLLM's core does)."""
        if self.queue_time is None and seconds >= 0:
            self.queue_time = seconds

    def delta(self, delta: GenerateDelta) -> None:
        if self.first_token_at is None and delta.token_ids:
            self.first_token_at = time.monotonic()
            self.span.add_event("first_token")
        self.input_tokens = delta.num_input_tokens
        self.output_tokens[delta.index] = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.span.add_event(
                "finish",
                {"index": delta.index, "gen_ai.response.finish_reason": delta.finish_reason},
            )

    def close(self) -> None:
        attributes: dict[str, Any] = {}
        if self.queue_time is not None:
            attributes["hfmesh.queue_time_s"] = self.queue_time
        elif self.scheduled_at is not None:
            attributes["hfmesh.queue_time_s"] = self.scheduled_at - self.started
        if self.first_token_at is not None:
            attributes["gen_ai.server.time_to_first_token"] = self.first_token_at - self.started
        if self.output_tokens:
            attributes["gen_ai.usage.input_tokens"] = self.input_tokens
            attributes["gen_ai.usage.output_tokens"] = sum(self.output_tokens.values())
        self.span.set_attributes(attributes)


_engine_request: contextvars.ContextVar[EngineRequestTrace | None] = contextvars.ContextVar(
    "engine_request", default=None
)


def current_request() -> EngineRequestTrace | None:
    """The engine request being traced in this context (None when tracing is off)."""
    return _engine_request.get()


def engine_request(
    model: str, *, generative: bool, request_id: str = ""
) -> AbstractContextManager[Any]:
    """An engine's one span per request: `generate <model>` or `encode <model>`."""
    if _tracer is None:
        return _OFF
    return _engine_request_span(model, generative, request_id)


@contextmanager
def _engine_request_span(model: str, generative: bool, request_id: str) -> Iterator[None]:
    operation = "generate" if generative else "encode"
    attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
    if request_id:
        attributes[REQUEST_ID_ATTRIBUTE] = request_id
    with span(f"{operation} {model}", attributes) as current:
        assert current is not None
        record = EngineRequestTrace(current)
        token = _engine_request.set(record)
        try:
            yield
        finally:
            _engine_request.reset(token)
            record.close()


# -- gRPC servers -------------------------------------------------------------


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What a gRPC server adds, outermost first: nothing when tracing is off."""
    return [TracingInterceptor()] if _tracer is not None else []


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _server_span(method: str, context: grpc.aio.ServicerContext) -> Span:
    assert _tracer is not None
    headers = _metadata(context)
    service, _, name = method.lstrip("/").rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    if REQUEST_ID_HEADER in headers:
        attributes[REQUEST_ID_ATTRIBUTE] = headers[REQUEST_ID_HEADER]
    current = _tracer.start_span(
        method.lstrip("/"), context=extract(headers), kind=SpanKind.SERVER, attributes=attributes
    )
    # grpc.aio runs each RPC in its own task: the span stays current for the rest of it.
    otel_context.attach(trace.set_span_in_context(current))
    return current


def _end(span: Span, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
    code = aborted_code(context, error)
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_attribute("error.type", code.name)
        span.set_status(Status(StatusCode.ERROR, context.details() or code.name))
    elif error is not None:
        fail(span, error)
    else:
        span.set_attribute("rpc.grpc.status_code", 0)
    span.end()


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """One server span per RPC (health and reflection aside), the child of the caller's
    `traceparent`, current while the handler runs."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNOBSERVED):
            return handler
        return observed(handler, lambda context: _server_span(method, context), _end)
