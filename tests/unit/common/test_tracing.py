"""`services.common.tracing`: off without an endpoint, the sampler from `OTEL_*`, W3C context into
gRPC metadata, error status on failure and cancellation."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from services.common import tracing
from services.common.engine import GenerateDelta
from services.common.errors import InvalidArgument


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.configure("test", {}, processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_off_without_an_endpoint():
    assert not tracing.configure("test", {"OTEL_SERVICE_NAME": "x"})
    assert not tracing.enabled()
    assert tracing.server_interceptors() == []
    metadata = (("x-request-id", "r1"),)
    assert tracing.with_trace_context(metadata) is metadata
    with tracing.span("nothing") as span, tracing.engine_request("m", generative=True):
        assert span is None and tracing.current_request() is None


def test_sampler_is_parent_based_ratio_unless_named():
    assert "ParentBased" in type(tracing._sampler({})).__name__
    assert "0.25" in tracing._sampler({"OTEL_TRACES_SAMPLER_ARG": "0.25"}).get_description()
    assert tracing._sampler({"OTEL_TRACES_SAMPLER": "always_off"}) is None  # the SDK's


def test_context_travels_as_traceparent_metadata(spans):
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.span("outer", parent=tracing.extract({"traceparent": parent})) as outer:
        metadata = dict(tracing.with_trace_context((("x-request-id", "r1"),)))
    assert metadata["x-request-id"] == "r1"
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert int(span_id, 16) == outer.get_span_context().span_id
    (finished,) = spans.get_finished_spans()
    assert finished.parent.span_id == 0xB7AD6B7169203331


async def test_engine_request_records_tokens_and_cancellation(spans):
    async def generate() -> None:
        with tracing.engine_request("m", generative=True, request_id="r1"):
            record = tracing.current_request()
            record.scheduled()
            record.delta(GenerateDelta(0, "a", [5], 3, 1))
            await asyncio.sleep(10)

    task = asyncio.ensure_future(generate())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (span,) = spans.get_finished_spans()
    assert span.name == "generate m"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "cancelled"
    assert span.attributes["gen_ai.usage.output_tokens"] == 1
    assert span.attributes["hfmesh.request_id"] == "r1"
    assert [e.name for e in span.events] == ["first_token"]


def test_a_rejected_request_names_its_code(spans):
    with pytest.raises(InvalidArgument), tracing.span("render"):
        raise InvalidArgument("bad")
    (span,) = spans.get_finished_spans()
    assert span.attributes["error.type"] == "INVALID_ARGUMENT"
    assert span.status.description == "bad"


def test_the_otlp_exporter_imports_beside_xds_protos():
    """xds-protos ships old opentelemetry-proto modules; installed last they break the exporter
    (scripts/setup.sh and the images reinstall opentelemetry-proto after it)."""
    import envoy.config.trace.v3.opentelemetry_pb2  # noqa: F401
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    assert OTLPSpanExporter
