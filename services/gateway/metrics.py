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
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.common.load_metrics import MODEL_REQUESTS, RUNNING, WAITING
from services.gateway.routing import ReplicaRouter

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
        self.registry.register(_ReplicaCollector(routes))

    def render(self) -> bytes:
        return generate_latest(self.registry)
