"""Prometheus metrics under the `vllm:` names gateways and autoscalers read (DESIGN.md §7).

What vLLM's engine exports, as far as the HF engine has it: running and waiting requests,
`vllm:kv_cache_usage_perc` as the generation batch's occupancy (sequences decoding over
`--max_concurrent_sequences`: the HF engine has no paged KV cache, the batch is what fills up),
time to first token, inter-token and end-to-end latency, queue time, prompt and generated tokens.
There is no prefix cache, so no prefix-cache series.

`EngineMetricFamilies` is one engine process's registry, served on its `--metrics_port`; each
model it serves (`services.engine_hf.repository`) has its series under its `model_name` label,
as vLLM labels them, in an `EngineMetrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: vLLM's bucket boundaries for inter-token latency and for whole requests.
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class EngineMetricFamilies:
    """The metric families of one engine process, in a registry of its own (so that several
    engines can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.running = Gauge(
            "vllm:num_requests_running",
            "Requests being processed (decoding or in a forward pass).",
            labels,
            registry=self.registry,
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests queued for admission.",
            labels,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=self.registry
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefilled prompt tokens.", labels, registry=self.registry
        )
        self.occupancy = Gauge(
            "vllm:kv_cache_usage_perc",
            "Generation batch occupancy: sequences decoding / max_concurrent_sequences (0-1).",
            labels,
            registry=self.registry,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            labels,
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from arrival to the last token of a finished request.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited before joining the batch.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose `/metrics` over HTTP (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)


class EngineMetrics:
    """One model's series (its `model_name` label) in `families` (default: families of its own)."""

    def __init__(self, model_name: str, families: EngineMetricFamilies | None = None) -> None:
        families = families or EngineMetricFamilies()
        self.registry = families.registry
        self.running = families.running.labels(model_name)
        self.kv_cache_usage = families.occupancy.labels(model_name)
        self.inter_token = families.itl.labels(model_name)
        self.e2e = families.e2e.labels(model_name)
        self.queue_time = families.queue.labels(model_name)
        self.waiting = families.waiting.labels(model_name)
        self.ttft = families.ttft.labels(model_name)
        self.generation_tokens = families.tokens.labels(model_name)
        self.prompt_tokens = families.prompt_tokens.labels(model_name)
