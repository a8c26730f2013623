"""The `grpc.health.v1.Health` service of every hfmesh gRPC server.

grpcio-health-checking's asyncio servicer keeps one `asyncio.Condition` per service name and
deletes it whenever any one Watch on that name ends. Every other watcher of the name is still
waiting on the deleted condition, and no later status change reaches it: a gateway replica
that saw NOT_SERVING while its engine loaded, and whose engine another client stopped watching
meanwhile (a replica closed, a watch renewed at its deadline), keeps NOT_SERVING after the
engine turns SERVING — the model looks ready through one address and "no engine is ready"
through the other. Here every change wakes every watcher through one condition that lives as
long as the servicer, and a watcher writes to its stream outside that condition, so one slow
client holds up neither `set` nor the other watchers.

Watch streams end once `close_watches()` is called (the server drains): an open watch (the
gateway holds one on every replica) would otherwise hold `server.stop(grace)` for the whole
grace. The watcher has seen NOT_SERVING by then; it sees its stream end and its next Watch
refused.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    """`Check` and `Watch` of each service name's status (`set`); "" is SERVING until set."""

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    def status(self, service: str) -> int:
        return self._statuses.get(service, SERVICE_UNKNOWN)

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    async def close_watches(self) -> None:
        """End every Watch stream now; one opened later ends at once."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=self._statuses[request.service])

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        sent: int | None = None
        while True:
            async with self._changed:
                while not self._closing and self.status(request.service) == sent:
                    await self._changed.wait()
                if self._closing:
                    return
                sent = self.status(request.service)
            await context.write(health_pb2.HealthCheckResponse(status=sent))
