"""Prometheus metrics of one gateway app (its own registry, so apps in one process don't
collide).

Routing: `hfmesh_gateway_routing_decisions_total{model, address, reason}` counts each engine
pick by its reason (`affinity_hit`, `affinity_miss`, `spill`, `least_loaded`, `session`,
`session_spill`), and `hfmesh_gateway_prefix_index_entries{model, address}` is the prefix
index's size per replica; a replica's series end when it leaves the model.

Canary: `hfmesh_gateway_revision_requests_total{model, revision}` counts the requests for a
public name by the revision they went to, and `hfmesh_gateway_revision_traffic{model,
revision}` is each revision's current weight; every other per-model metric of a revision
carries the revision's own name as its `model` label.

The OpenTelemetry GenAI server metrics in Prometheus form, with the conventions' bucket
boundaries: `gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`,
`gen_ai_server_time_per_output_token_seconds` (labels `gen_ai_operation_name`,
`gen_ai_request_model`; the duration also `error_type`, empty on success) and
`gen_ai_client_token_usage` (`gen_ai_token_type` input/output).

Outcomes: `hfmesh_gateway_received_total{family}` counts requests as they arrive and
`hfmesh_gateway_outcomes_total{family, outcome}` as they end, so once nothing is in flight
received = success + client_error + rejected + cancelled + server_error for every route family
(`outcome_of`). The load an autoscaler reads, running and waiting per model, is
`hfmesh_gateway_model_requests` (`services.common.load_metrics`).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.common.load_metrics import MODEL_REQUESTS, RUNNING, WAITING
from services.gateway.genai import GenAIRequest
from services.gateway.routing import ReplicaRouter

#: The GenAI semantic conventions' explicit bucket boundaries.
TOKEN_USAGE_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16, … 67108864
REQUEST_DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(14))  # 0.01, 0.02, … 81.92
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TIME_PER_OUTPUT_TOKEN_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
#: Time to an answer's status: a refusal takes well under a millisecond of gateway work.
RESPONSE_START_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
    60,
)
OUTCOMES = ("success", "client_error", "rejected", "cancelled", "server_error")
_GENAI_LABELS = ["gen_ai_operation_name", "gen_ai_request_model"]


def outcome_of(status: int | None, complete: bool) -> str:
    """A finished request's outcome: no response, 499 or a body cut short → cancelled; 429 and
    503 (over a limit, overloaded, not ready) → rejected; other 4xx → client_error; other 5xx →
    server_error."""
    if status is None or status == 499 or not complete:
        return "cancelled"
    if status in (429, 503):
        return "rejected"
    if 400 <= status < 500:
        return "client_error"
    if status >= 500:
        return "server_error"
    return "success"


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _ReplicaCollector:
    """Per-replica and per-model state read at scrape time."""

    def __init__(self, routes: ReplicaRouter) -> None:
        self.routes = routes

    def collect(self):
        in_flight = GaugeMetricFamily(
            "hfmesh_gateway_replica_in_flight",
            "requests in flight per service replica",
            labels=["address"],
        )
        serving = GaugeMetricFamily(
            "hfmesh_gateway_replica_serving",
            "1 when the replica's health is SERVING",
            labels=["address"],
        )
        model_requests = GaugeMetricFamily(
            MODEL_REQUESTS,
            "requests per model: running at its engines, or waiting for a replica",
            labels=["model", "state"],
        )
        decisions = CounterMetricFamily(
            "hfmesh_gateway_routing_decisions",
            "engine replica picks by model, replica and reason",
            labels=["model", "address", "reason"],
        )
        index_entries = GaugeMetricFamily(
            "hfmesh_gateway_prefix_index_entries",
            "prefix index entries (token block hashes) per model and replica",
            labels=["model", "address"],
        )
        revision_requests = CounterMetricFamily(
            "hfmesh_gateway_revision_requests",
            "requests for a public model name by the revision they went to",
            labels=["model", "revision"],
        )
        revision_traffic = GaugeMetricFamily(
            "hfmesh_gateway_revision_traffic",
            "each revision's traffic weight now",
            labels=["model", "revision"],
        )
        for public, split in self.routes.splits.items():
            for revision, weight in split.weights.items():
                revision_requests.add_metric([public, revision], split.requests[revision])
                revision_traffic.add_metric([public, revision], weight)
        for name, route in self.routes.by_name.items():
            for (address, reason), count in route.decisions.items():
                decisions.add_metric([name, address, reason], count)
            for address, entries in route.index.entries().items():
                index_entries.add_metric([name, address], entries)
        for address, replica in self.routes.replicas.items():
            in_flight.add_metric([address], replica.in_flight)
            serving.add_metric([address], 1.0 if replica.serving else 0.0)
        for name, route in self.routes.by_name.items():
            model_requests.add_metric([name, RUNNING], route.in_flight)
            model_requests.add_metric([name, WAITING], route.waiting)
        yield in_flight
        yield serving
        yield model_requests
        yield decisions
        yield index_entries
        yield revision_requests
        yield revision_traffic


class GatewayMetrics:
    def __init__(self, routes: ReplicaRouter) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hfmesh_gateway_requests",
            "HTTP requests by route family and status",
            ["family", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "hfmesh_gateway_requests_in_flight",
            "HTTP requests being served",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "hfmesh_gateway_time_to_first_token_seconds",
            "request arrival → first generated token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "hfmesh_gateway_generation_tokens",
            "tokens generated",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "hfmesh_gateway_prompt_tokens", "prompt tokens", ["model"], registry=self.registry
        )
        self.received = Counter(
            "hfmesh_gateway_received",
            "HTTP requests received, by route family",
            ["family"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "hfmesh_gateway_outcomes",
            "HTTP requests finished, by route family and outcome",
            ["family", "outcome"],
            registry=self.registry,
        )
        self.response_start = Histogram(
            "hfmesh_gateway_response_start_seconds",
            "request in the gateway's app → its response status sent, by route family and "
            "status (a 503 refusal: all its work; a stream: until its first event is ready)",
            ["family", "status"],
            buckets=RESPONSE_START_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "GenAI server request duration (to the last output token or the error)",
            [*_GENAI_LABELS, "error_type"],
            buckets=REQUEST_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token",
            _GENAI_LABELS,
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first",
            _GENAI_LABELS,
            buckets=TIME_PER_OUTPUT_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request, input and output",
            [*_GENAI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_USAGE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ReplicaCollector(routes))

    def observe_genai(self, record: GenAIRequest, error_type: str) -> None:
        """A finished inference request's GenAI metrics (`services.gateway.genai`)."""
        if record.operation is None or record.model is None:
            return
        labels = (record.operation, record.model)
        ended = record.finished_at or time.monotonic()
        self.request_duration.labels(*labels, error_type).observe(ended - record.started)
        if error_type:
            return
        if record.first_token_at is not None:
            self.time_to_first_token.labels(*labels).observe(record.first_token_at - record.started)
            if record.output_tokens and record.output_tokens > 1:
                per_token = (ended - record.first_token_at) / (record.output_tokens - 1)
                self.time_per_output_token.labels(*labels).observe(per_token)
        if record.input_tokens is not None:
            self.token_usage.labels(*labels, "input").observe(record.input_tokens)
        if record.output_tokens is not None:
            self.token_usage.labels(*labels, "output").observe(record.output_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
