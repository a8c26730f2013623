"""Prometheus metrics under the `vllm:` names gateways and autoscalers read (DESIGN.md §7)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class EngineMetrics:
    """One registry per engine, so several engines can live in one test process."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self._running = Gauge(
            "vllm:num_requests_running",
            "Requests being processed (decoding or in a forward pass).",
            labels,
            registry=self.registry,
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests queued for admission.",
            labels,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=self.registry
        )
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", labels, registry=self.registry
        )
        self.running = self._running.labels(model_name)
        self.waiting = self._waiting.labels(model_name)
        self.ttft = self._ttft.labels(model_name)
        self.generation_tokens = self._tokens.labels(model_name)
        self.prompt_tokens = self._prompt_tokens.labels(model_name)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose `/metrics` over HTTP (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
