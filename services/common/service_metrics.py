"""Request counts and latency per operation, for the services without model metrics of their
own (tokenizer: per tokenizer operation; control plane: per gRPC method).

`hfmesh_<service>_requests_total{operation, code}` counts finished requests by their gRPC status
code name (`OK`, `INVALID_ARGUMENT`, …, `CANCELLED`); `hfmesh_<service>_request_duration_seconds
{operation}` is their latency. A long-lived stream (the control plane's ADS) is one request that
ends when the stream does. Each service has its own registry, served on `--metrics_port`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from services.common.errors import HfmeshError
from services.common.interceptors import UNOBSERVED, aborted_code, observed

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def status_of(error: BaseException | None) -> str:
    """The gRPC status code name a request ended with."""
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    if isinstance(error, HfmeshError):
        return error.grpc_code.name
    return grpc.StatusCode.INTERNAL.name


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"hfmesh_{service}_requests",
            f"{service} requests finished, by operation and gRPC status code",
            ["operation", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"hfmesh_{service}_request_duration_seconds",
            f"{service} request latency by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def record(self, operation: str, started: float, status: str) -> None:
        self.requests.labels(operation, status).inc()
        self.duration.labels(operation).observe(time.perf_counter() - started)

    @contextmanager
    def track(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            self.record(operation, started, status_of(error))
            raise
        self.record(operation, started, grpc.StatusCode.OK.name)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose `/metrics` over HTTP (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC but health and reflection, by method (`Service/Method`)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNOBSERVED):
            return handler
        operation = method.lstrip("/")

        def end(started: float, context, error: BaseException | None) -> None:
            code = aborted_code(context, error)
            status = code.name if code is not None else status_of(error)
            self.metrics.record(operation, started, status)

        return observed(handler, lambda context: time.perf_counter(), end)
