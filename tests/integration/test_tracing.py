"""One trace across every hop: gateway, tokenizer and HF engines as real processes exporting
OTLP/gRPC to a real receiver (`tests.helpers.otlp`), driven over HTTP with a `traceparent`."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow  # a multi-process mesh

GATEWAY, TOKENIZER, ENGINE = "hfmesh-gateway", "hfmesh-tokenizer", "hfmesh-engine-hf"
SERVER = 2  # SpanKind SERVER in OTLP


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory, receiver):
    models = [
        model_entry("llm", model_path("tiny-llama"), "text_generation", max_model_len=256),
        model_entry("embed", model_path("all-minilm-l6-v2"), "text_embedding"),
        model_entry("sentiment", model_path("tiny-bert-sentiment"), "sequence_classification"),
    ]
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with running_mesh(models, tmp_path_factory.mktemp("mesh"), env=env) as started:
        yield started


@pytest.fixture(scope="module")
def http(mesh):
    with httpx.Client(base_url=mesh["gateway"].url, timeout=120) as client:
        yield client


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def _traced_post(http, path: str, body: dict, **headers: str) -> tuple[str, str, httpx.Response]:
    """POST `body` under a fresh trace context: the trace id, the caller's span id, the reply."""
    trace_id, parent, header = _traceparent()
    reply = http.post(path, json=body, headers={"traceparent": header, **headers})
    return trace_id, parent, reply


def _one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan, service: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and s.service == service]


def test_chat_is_one_trace_across_gateway_tokenizer_and_engine(http, receiver):
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 5,
        "temperature": 0,
    }
    trace_id, parent, reply = _traced_post(
        http, "/openai/v1/chat/completions", body, **{"X-Request-Id": "trace-chat-1"}
    )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans}
        return {(GATEWAY, "chat llm"), (TOKENIZER, "render"), (ENGINE, "generate llm")} <= names

    spans = receiver.wait_for(complete, trace_id)
    request = _one(spans, GATEWAY, "chat llm")
    assert request.parent_id == parent  # the incoming traceparent is honoured
    assert request.kind == SERVER and not request.error
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "llm"
    assert attributes["gen_ai.request.max_tokens"] == 5
    assert attributes["gen_ai.request.temperature"] == 0
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == [
        reply.json()["choices"][0]["finish_reason"]
    ]
    assert attributes["hfmesh.request_id"] == "trace-chat-1"

    # gateway → tokenizer: its server span under the request span, render under that
    (tokenizer_rpc,) = _children(spans, request, TOKENIZER)
    assert tokenizer_rpc.name == "inference.GRPCInferenceService/ModelInfer"
    assert tokenizer_rpc.kind == SERVER
    assert tokenizer_rpc.attributes["hfmesh.request_id"] == "trace-chat-1"
    assert _one(spans, TOKENIZER, "render").parent_id == tokenizer_rpc.span_id

    # gateway → engine: the stream's server span, the one request span under it
    (engine_rpc,) = _children(spans, request, ENGINE)
    assert engine_rpc.name == "inference.GRPCInferenceService/ModelStreamInfer"
    generate = _one(spans, ENGINE, "generate llm")
    assert generate.parent_id == engine_rpc.span_id and not generate.error
    assert generate.events[0] == "first_token" and generate.events[-1] == "finish"
    assert generate.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert 0 <= generate.attributes["hfmesh.queue_time_s"]
    assert (
        generate.attributes["hfmesh.queue_time_s"]
        <= generate.attributes["gen_ai.server.time_to_first_token"]
    )
    # health checks (the gateway watches every replica) are never traced
    assert not [s for s in receiver.spans if "grpc.health" in s.name]


def test_rejected_request_is_an_error(http, receiver):
    body = {"model": "llm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9999}
    trace_id, _, reply = _traced_post(http, "/openai/v1/chat/completions", body)
    assert reply.status_code == 400
    spans = receiver.wait_for(lambda s: any(x.service == GATEWAY for x in s), trace_id)
    request = _one(spans, GATEWAY, "chat llm")
    assert request.error and request.attributes["error.type"] == "400"
    assert request.attributes["http.response.status_code"] == 400
    assert not [s for s in spans if s.service == ENGINE]  # rejected before any engine work


def test_cancelled_stream_is_an_error_at_gateway_and_engine(mesh, receiver):
    trace_id, _, header = _traceparent()
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Count to a thousand"}],
        "max_tokens": 200,
        "min_tokens": 200,
        "stream": True,
    }
    with httpx.Client(base_url=mesh["gateway"].url, timeout=120) as client:
        with client.stream(
            "POST", "/openai/v1/chat/completions", json=body, headers={"traceparent": header}
        ) as reply:
            assert reply.status_code == 200
            next(reply.iter_lines())  # the first event, then hang up

    def ended(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans}
        return {(GATEWAY, "chat llm"), (ENGINE, "generate llm")} <= names

    spans = receiver.wait_for(ended, trace_id)
    request = _one(spans, GATEWAY, "chat llm")
    assert request.error and request.attributes["error.type"] == "cancelled"
    generate = _one(spans, ENGINE, "generate llm")
    assert generate.error and generate.attributes["error.type"] == "cancelled"
    assert "finish" not in generate.events


def test_embeddings_on_the_direct_route_trace_gateway_and_engine(http, receiver):
    """Encoder text goes straight to the HF engine (`--encoder_route auto`): one engine call
    under the request span, the engine's own tokenizing inside its request span."""
    body = {"model": "embed", "input": ["A man is eating food."]}
    trace_id, parent, reply = _traced_post(http, "/openai/v1/embeddings", body)
    assert reply.status_code == 200, reply.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {"embeddings embed", "encode embed"} <= {s.name for s in spans}

    spans = receiver.wait_for(complete, trace_id)
    request = _one(spans, GATEWAY, "embeddings embed")
    assert request.parent_id == parent and not request.error
    assert request.attributes["gen_ai.usage.input_tokens"] == reply.json()["usage"]["prompt_tokens"]
    (engine_rpc,) = _children(spans, request, ENGINE)
    assert engine_rpc.kind == SERVER
    assert _one(spans, ENGINE, "encode embed").parent_id == engine_rpc.span_id
    assert not [s for s in spans if s.service == TOKENIZER]


def test_classify_traces_preprocess_engine_postprocess(http, receiver):
    """The split route (`/classify` takes it: its class names come from the tokenizer):
    preprocess, engine, postprocess in order, each inside its service's RPC span."""
    body = {"model": "sentiment", "input": ["I loved it"]}
    trace_id, parent, reply = _traced_post(http, "/openai/classify", body)
    assert reply.status_code == 200, reply.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans}
        return {"preprocess", "encode sentiment", "postprocess"} <= names

    spans = receiver.wait_for(complete, trace_id)
    (request,) = [s for s in spans if s.service == GATEWAY and s.parent_id == parent]
    assert not request.error
    steps = [
        _one(spans, TOKENIZER, "preprocess"),
        _one(spans, ENGINE, "encode sentiment"),
        _one(spans, TOKENIZER, "postprocess"),
    ]
    by_id = {s.span_id: s for s in spans}
    for step in steps:
        server_span = by_id[step.parent_id]  # each step inside its service's RPC span …
        assert server_span.kind == SERVER and server_span.parent_id == request.span_id  # … of it
    assert steps[0].end <= steps[1].start and steps[1].end <= steps[2].start
