"""The gateway's view of the mesh from the control plane: an ADS subscriber of its own.

grpc's built-in `xds:///` balancing hides the replicas behind one channel; the gateway needs
one channel per replica and each replica's load, so it reads the ClusterLoadAssignments itself
(state of the world over the Aggregated Discovery Service, `xds-protos` message types) and
hands `{service: [Endpoint]}` changes to its router.

Protocol, per DESIGN.md §6 and the control plane's docs: one stream subscribes to the
ClusterLoadAssignments of the given services (`<model>.<backend>`, `<model>.tokenizer`,
`tokenizer`; none named: every service). Each response is validated whole: a valid one is
applied and ACKed (its version and nonce echoed), an invalid one is NACKed with the reason
and the version last applied, and changes nothing. A service missing from a response keeps
its endpoints (xDS does not delete EDS resources by omission). When the control plane goes
away the last known endpoints stay; the subscriber reconnects with backoff and resubscribes
with the version it holds, and the control plane answers with its current state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import code_pb2, status_pb2

from services.common.model_list import MeshPlan
from services.common.tls import TlsConfig, aio_channel

logger = logging.getLogger(__name__)

ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
STREAM_SECONDS = 300.0  # each stream's deadline; a new one follows at once
_UNUSABLE = {health_check_pb2.HealthStatus.UNHEALTHY, health_check_pb2.HealthStatus.TIMEOUT}
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
]


@dataclass(frozen=True, order=True)
class Endpoint:
    """One replica of a service: where to dial it, and whether it takes new work."""

    address: str
    draining: bool = False


Endpoints = dict[str, list[Endpoint]]


class DiscoveryError(Exception):
    """The control plane could not be reached at start."""


class InvalidResponse(ValueError):
    """A response this subscriber rejects (NACKs)."""


def subscriptions(plan: MeshPlan) -> list[str]:
    """The services a gateway serving `plan` follows: each model's tokenizers and engines."""
    names = []
    for entry in plan.models:
        names += [f"{entry.name}.tokenizer", *(f"{entry.name}.{b}" for b in entry.backends)]
    return names


def parse_response(response: discovery_pb2.DiscoveryResponse) -> Endpoints:
    """Every ClusterLoadAssignment of the response as `{cluster: sorted endpoints}`."""
    if response.type_url != ENDPOINT_TYPE:
        raise InvalidResponse(f"unexpected type {response.type_url}")
    parsed: Endpoints = {}
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        if not packed.Unpack(assignment):
            raise InvalidResponse(f"a resource of type {packed.type_url} in an EDS response")
        if not assignment.cluster_name:
            raise InvalidResponse("a ClusterLoadAssignment without cluster_name")
        endpoints = set()
        for locality in assignment.endpoints:
            for lb_endpoint in locality.lb_endpoints:
                socket = lb_endpoint.endpoint.address.socket_address
                if not socket.address or not 1 <= socket.port_value <= 65535:
                    raise InvalidResponse(
                        f"{assignment.cluster_name}: endpoint without an address and port"
                    )
                if lb_endpoint.health_status in _UNUSABLE:
                    continue
                host = f"[{socket.address}]" if ":" in socket.address else socket.address
                draining = lb_endpoint.health_status == health_check_pb2.HealthStatus.DRAINING
                endpoints.add(Endpoint(f"{host}:{socket.port_value}", draining))
        parsed[assignment.cluster_name] = sorted(endpoints)
    return parsed


class Discovery:
    """`await start()`, then `endpoints` holds the last known state; `on_change` and
    `changes()` get each applied change (the services whose endpoints changed).

    `start(connect_timeout)` returns once the first response is applied, or raises
    `DiscoveryError` naming the control plane: a gateway told to follow a control plane it
    cannot reach at start has nothing to route to, and says so (as a replica's registration
    does). Later outages are logged and outlived.
    """

    def __init__(
        self,
        control_plane: str,
        services: Iterable[str] = (),
        *,
        node_id: str = "hfmesh-gateway",
        on_change: Callable[[Endpoints], None] | None = None,
        max_backoff: float = 5.0,
        tls: TlsConfig | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.services = sorted(set(services))
        self.node = base_pb2.Node(id=node_id, cluster="hfmesh")
        self.on_change = on_change
        self.max_backoff = max_backoff
        self.endpoints: Endpoints = {}
        self.version = ""  # the version last applied (ACKed)
        self.connected = False
        self._queues: set[asyncio.Queue[Endpoints]] = set()
        self._channel = aio_channel(control_plane, tls, CHANNEL_OPTIONS)
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    async def start(self, connect_timeout: float = 30.0) -> None:
        self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(self._first.wait(), connect_timeout)
        except TimeoutError:
            await self.close()
            raise DiscoveryError(
                f"the control plane at {self.control_plane} is unreachable (tried for "
                f"{connect_timeout:g}s): is it running, and is --control_plane right?"
            ) from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()

    def changes(self) -> AsyncIterator[Endpoints]:
        """Each change applied from this call on (`async for change in d.changes()`)."""
        queue: asyncio.Queue[Endpoints] = asyncio.Queue()
        self._queues.add(queue)
        return self._changes(queue)

    async def _changes(self, queue: asyncio.Queue[Endpoints]) -> AsyncIterator[Endpoints]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    async def _run(self) -> None:
        backoff, warned = 0.1, False
        while True:
            try:
                await self._stream()
            except grpc.aio.AioRpcError as error:
                lost = error.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                if lost and (self.connected or not warned):  # once per outage
                    logger.warning(
                        "control plane at %s: %s; keeping the last known endpoints",
                        self.control_plane,
                        error.code().name,
                    )
                    warned = True
            if self.connected:
                backoff = 0.1
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _stream(self) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        call = stub.StreamAggregatedResources(timeout=STREAM_SECONDS)
        await call.write(self._request())
        async for response in call:
            if not self.connected:
                logger.info(
                    "subscribed to %s at %s",
                    ", ".join(self.services) or "every service",
                    self.control_plane,
                )
            self.connected = True
            try:
                update = parse_response(response)
            except InvalidResponse as error:
                logger.warning("rejected EDS version %s: %s", response.version_info, error)
                await call.write(self._request(response.nonce, str(error)))
                continue
            self.version = response.version_info
            await call.write(self._request(response.nonce))
            self._apply(update)
            self._first.set()

    def _request(self, nonce: str = "", error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            node=self.node,
            type_url=ENDPOINT_TYPE,
            resource_names=self.services,
            version_info=self.version,
            response_nonce=nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(
                status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error)
            )
        return request

    def _apply(self, update: Endpoints) -> None:
        changed = {name: eps for name, eps in update.items() if self.endpoints.get(name) != eps}
        if not changed:
            return
        self.endpoints.update(changed)
        for name, endpoints in sorted(changed.items()):
            logger.info(
                "%s: %s",
                name,
                ", ".join(e.address + (" (draining)" if e.draining else "") for e in endpoints)
                or "none",
            )
        if self.on_change is not None:
            self.on_change(changed)
        for queue in self._queues:
            queue.put_nowait(changed)
