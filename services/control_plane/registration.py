"""The `Registration` service: replicas publish themselves under a lease.

A registration is keyed by (service, model, backend, address): registering the same key again
updates its draining flag, renews it and returns the same lease. A lease not renewed within its
TTL expires and its endpoint is withdrawn, so a replica that dies without deregistering
disappears by itself. Validation happens before anything is published: a malformed request is
INVALID_ARGUMENT and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import grpc

from services.common.errors import InvalidArgument, NotFound
from services.common.pb import registration_pb2 as pb
from services.common.pb import registration_pb2_grpc as pb_grpc
from services.control_plane.store import (
    ENGINE_BACKENDS,
    TOKENIZER,
    EndpointStore,
    Publication,
    ServiceKey,
    parse_address,
)

logger = logging.getLogger(__name__)

SOURCE = "registration"
ENGINE = "engine"


@dataclass
class _Lease:
    lease_id: str
    publication: Publication
    timer: asyncio.TimerHandle | None = None


def publication_of(request: pb.RegisterRequest, store: EndpointStore) -> Publication:
    """The request as a publication, or InvalidArgument saying what is wrong."""
    if request.service == TOKENIZER:
        if request.backend:
            raise InvalidArgument("a tokenizer registration names no backend")
        role = TOKENIZER
    elif request.service == ENGINE:
        if request.backend not in ENGINE_BACKENDS:
            raise InvalidArgument(f"backend must be one of {', '.join(ENGINE_BACKENDS)}")
        role = request.backend
    else:
        raise InvalidArgument(f"service must be '{TOKENIZER}' or '{ENGINE}'")
    if not store.is_known_model(request.model):
        raise InvalidArgument(f"unknown model '{request.model}'")
    try:
        parse_address(request.address)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    key = ServiceKey(request.model, role)
    return Publication(key, request.address.strip(), request.draining)


class RegistrationServicer(pb_grpc.RegistrationServicer):
    def __init__(self, store: EndpointStore, ttl_seconds: float = 10.0) -> None:
        self._store = store
        self.ttl_seconds = ttl_seconds
        self._leases: dict[str, _Lease] = {}
        self._by_slot: dict[tuple[ServiceKey, str], str] = {}

    @property
    def leases(self) -> int:
        return len(self._leases)

    async def Register(
        self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.Lease:
        publication = publication_of(request, self._store)
        slot = (publication.key, publication.address)
        lease_id = self._by_slot.get(slot)
        if lease_id is None:
            lease_id = self._by_slot[slot] = uuid.uuid4().hex
            self._leases[lease_id] = _Lease(lease_id, publication)
            logger.info("registered %s at %s", publication.key.name, publication.address)
        lease = self._leases[lease_id]
        if lease.publication.draining != publication.draining:
            logger.info("%s at %s is draining", publication.key.name, publication.address)
        lease.publication = publication
        self._store.put(SOURCE, publication)
        return self._renew(lease)

    async def Renew(self, request: pb.RenewRequest, context: grpc.aio.ServicerContext) -> pb.Lease:
        lease = self._leases.get(request.lease_id)
        if lease is None:
            raise NotFound(f"no lease '{request.lease_id}' (expired?): register again")
        return self._renew(lease)

    async def Deregister(
        self, request: pb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeregisterResponse:
        lease = self._leases.get(request.lease_id)
        if lease is not None:
            logger.info(
                "deregistered %s at %s", lease.publication.key.name, lease.publication.address
            )
            self._drop(lease)
        return pb.DeregisterResponse()

    def close(self) -> None:
        for lease in self._leases.values():
            if lease.timer is not None:
                lease.timer.cancel()

    def _renew(self, lease: _Lease) -> pb.Lease:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = asyncio.get_running_loop().call_later(self.ttl_seconds, self._expire, lease)
        return pb.Lease(lease_id=lease.lease_id, ttl_seconds=self.ttl_seconds)

    def _expire(self, lease: _Lease) -> None:
        logger.warning(
            "lease of %s at %s expired: withdrawn",
            lease.publication.key.name,
            lease.publication.address,
        )
        self._drop(lease)

    def _drop(self, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        del self._leases[lease.lease_id]
        del self._by_slot[(lease.publication.key, lease.publication.address)]
        self._store.remove(SOURCE, lease.publication.key, lease.publication.address)
