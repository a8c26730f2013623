"""Health-checks every published endpoint over `grpc.health.v1` (service "").

An endpoint that answers NOT_SERVING is withdrawn at once (a draining runner says so before it
stops); one that does not answer is withdrawn after `failures` consecutive failed checks, so one
slow answer on a busy machine does not move traffic. Either comes back at its first SERVING
answer. Draining is not decided here: it is what the source published. The checks speak the
control plane's TLS settings: in a mutual-TLS mesh they present its certificate.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TlsConfig, aio_channel
from services.control_plane.store import EndpointStore

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthChecker:
    def __init__(
        self,
        store: EndpointStore,
        *,
        interval: float = 1.0,
        timeout: float = 3.0,
        failures: int = 3,
        tls: TlsConfig | None = None,
    ) -> None:
        self.tls = tls
        self._store = store
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._failed: dict[str, int] = {}

    async def run(self) -> None:
        """Check every `interval` seconds until cancelled."""
        try:
            while True:
                await self.check_all()
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def check_all(self) -> None:
        addresses = sorted(self._store.addresses())
        for gone in set(self._channels) - set(addresses):
            await self._channels.pop(gone).close()
            self._failed.pop(gone, None)
            self._store.forget(gone)
        answers = await asyncio.gather(*(self._check(address) for address in addresses))
        for address, answer in zip(addresses, answers, strict=True):
            if answer == SERVING:
                self._failed[address] = 0
                self._store.set_healthy(address, True)
                continue
            self._failed[address] = self._failed.get(address, 0) + 1
            if answer is not None or self._failed[address] >= self.failures:
                self._store.set_healthy(address, False)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _check(self, address: str) -> int | None:
        """The health status the endpoint answers, or None when it does not answer."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio_channel(address, self.tls)
        try:
            # types-grpcio-health-checking declares HealthStub without its methods.
            check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
            response = await check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            logger.debug("health check of %s failed: %s", address, error.code())
            return None
        return response.status
