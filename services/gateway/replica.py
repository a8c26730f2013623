"""One service replica as the gateway sees it: its gRPC channel, health and load.

Each replica has a background `grpc.health.v1.Health/Watch`; it is available when SERVING,
not draining, and not cooling down after a call that failed with UNAVAILABLE. Its load is
the gateway's requests in flight there, the uncached prompt tokens awaiting prefill, and the
requests of other clients the engine last reported (`load_metrics.ENGINE_IN_FLIGHT`, fresh
for `REPORT_SECONDS`). When it stops serving, `on_lost` is called: its engine cache is gone.
Its channel speaks the gateway's `--tls_*` settings (mutual TLS inside the mesh) when set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import MAX_MESSAGE_BYTES
from services.common.tls import TlsConfig, aio_channel

logger = logging.getLogger(__name__)

WATCH_SECONDS = 300.0  # each Watch call's deadline; it is renewed right away
FAILURE_COOLDOWN = 2.0  # seconds a replica is skipped after an UNAVAILABLE call
#: How long an engine's report of its requests in flight counts (it comes with each call).
REPORT_SECONDS = 5.0


class Replica:
    """One service instance: its channel, health, and load."""

    def __init__(
        self,
        address: str,
        on_lost: Callable[[Replica], None] | None = None,
        *,
        tls: TlsConfig | None = None,
    ) -> None:
        self.address = address
        self.on_lost = on_lost  # called when it stops serving (its engine cache is gone)
        self.channel = aio_channel(
            address,
            tls,
            [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.serving = False
        self.draining = False
        self.in_flight = 0
        self.pending_tokens = 0  # uncached prompt tokens sent, not yet answered (prefill queue)
        self._others = 0  # requests in flight from other clients, as the engine last reported
        self._reported_at = -REPORT_SECONDS
        self.last_pick = 0  # when a policy last chose it (a tie-breaker)
        self.failed_until = 0.0
        self._watch: asyncio.Task | None = None
        self.changed = asyncio.Event()

    @property
    def available(self) -> bool:
        return self.serving and not self.draining and time.monotonic() >= self.failed_until

    @property
    def others_in_flight(self) -> int:
        """Requests in flight at the engine that this gateway did not send, as of the
        engine's last report (a report older than `REPORT_SECONDS` counts for nothing)."""
        fresh = time.monotonic() - self._reported_at < REPORT_SECONDS
        return self._others if fresh else 0

    def engine_report(self, in_flight: int) -> None:
        """The engine had `in_flight` requests when one of this gateway's calls opened; this
        gateway's own other calls there are not counted twice."""
        self._others = max(0, in_flight - (self.in_flight - 1))
        self._reported_at = time.monotonic()

    def mark_failed(self) -> None:
        self.failed_until = time.monotonic() + FAILURE_COOLDOWN

    def start(self) -> None:
        self._watch = asyncio.ensure_future(self._watch_health())

    async def _watch_health(self) -> None:
        stub = health_pb2_grpc.HealthStub(self.channel)
        backoff = 0.1
        while True:
            try:
                # types-grpcio-health-checking declares HealthStub without its methods.
                watch = stub.Watch  # type: ignore[attr-defined]
                call = watch(health_pb2.HealthCheckRequest(service=""), timeout=WATCH_SECONDS)
                async for reply in call:
                    self._set_serving(reply.status == health_pb2.HealthCheckResponse.SERVING)
                    backoff = 0.1
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._set_serving(False)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    def _set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            logger.info("%s is %s", self.address, "SERVING" if serving else "NOT_SERVING")
            if not serving and self.on_lost is not None:
                self.on_lost(self)
        self.serving = serving
        if serving:
            self.failed_until = 0.0
        self.changed.set()
        self.changed = asyncio.Event()

    async def close(self, grace: float | None = None) -> None:
        """Stop watching; close the channel once its calls finish (at most `grace` seconds)."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self.channel.close(grace)
