"""Prometheus metrics under the `vllm:` names gateways and autoscalers read (DESIGN.md §7).

What vLLM's engine exports, as far as the HF engine has it: running and waiting requests,
`vllm:kv_cache_usage_perc` as the generation batch's occupancy (sequences decoding over
`--max_concurrent_sequences`: the HF engine has no paged KV cache, the batch is what fills up),
time to first token, inter-token and end-to-end latency, queue time, prompt and generated tokens.
There is no prefix cache, so no prefix-cache series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: vLLM's bucket boundaries for inter-token latency and for whole requests.
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)
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
        self._occupancy = Gauge(
            "vllm:kv_cache_usage_perc",
            "Generation batch occupancy: sequences decoding / max_concurrent_sequences (0-1).",
            labels,
            registry=self.registry,
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            labels,
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from arrival to the last token of a finished request.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited before joining the batch.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.running = self._running.labels(model_name)
        self.kv_cache_usage = self._occupancy.labels(model_name)
        self.inter_token = self._itl.labels(model_name)
        self.e2e = self._e2e.labels(model_name)
        self.queue_time = self._queue.labels(model_name)
        self.waiting = self._waiting.labels(model_name)
        self.ttft = self._ttft.labels(model_name)
        self.generation_tokens = self._tokens.labels(model_name)
        self.prompt_tokens = self._prompt_tokens.labels(model_name)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose `/metrics` over HTTP (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
