"""Aggregated Discovery Service, state of the world (one stream carries every type).

Per stream and type the servicer keeps what the client subscribed to, what it last sent
(version, nonce, content) and what the client last accepted:

- A request without `response_nonce` (a new or reconnected stream) is answered with the current
  state, whatever `version_info` it carries.
- A request whose nonce is not the last one sent for its type is stale and ignored.
- An ACK (nonce current, no `error_detail`) records `version_info` as accepted. A NACK (with
  `error_detail`) is logged; the client keeps the version it names, and the rejected content is
  not sent again: the next change is.
- A changed subscription is answered at once; a store change is pushed to every stream whose
  subscribed content changed. SotW: a response holds every subscribed resource of its type.
- Empty `resource_names` on a type's first request, or `"*"`, subscribe to everything (and
  stay so while later requests of that type name nothing).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from services.control_plane.resources import TYPE_URLS
from services.control_plane.snapshot import SnapshotCache

logger = logging.getLogger(__name__)

_CLOSED = object()
WILDCARD = "*"


@dataclass
class TypeState:
    names: frozenset[str] | None = None  # None: everything
    sent_version: str = ""
    sent_nonce: str = ""
    sent_content: tuple[tuple[str, bytes], ...] | None = None
    acked_version: str = ""
    nack: str | None = None


@dataclass
class ClientState:
    peer: str
    node_id: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self._nonces = itertools.count(1)
        self._stream_ids = itertools.count(1)
        #: Connected streams by id: what each subscribed to, was sent and accepted.
        self.clients: dict[int, ClientState] = {}

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream_id = next(self._stream_ids)
        client = self.clients[stream_id] = ClientState(peer=context.peer())
        queue = self._cache.watch()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(request)
            finally:
                queue.put_nowait(_CLOSED)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await queue.get()) is not _CLOSED:
                if isinstance(item, discovery_pb2.DiscoveryRequest):
                    responses = self._on_request(client, item)
                else:
                    responses = [self._response(client, t) for t in TYPE_URLS if t in client.types]
                for response in responses:
                    if response is not None:
                        yield response
        finally:
            reader.cancel()
            self._cache.unwatch(queue)
            del self.clients[stream_id]
            logger.info("ADS stream of %s (%s) closed", client.node_id or "?", client.peer)

    def _on_request(
        self, client: ClientState, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse | None]:
        if request.node.id and not client.node_id:
            client.node_id = request.node.id
            logger.info("ADS stream from node %s (%s)", client.node_id, client.peer)
        type_url = request.type_url
        if type_url not in TYPE_URLS:
            logger.warning("node %s asked for unknown type %s", client.node_id, type_url)
            return []
        state = client.types.setdefault(type_url, TypeState())
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return []  # stale: answers a response that a newer one replaced
            state.acked_version = request.version_info
            if request.HasField("error_detail"):
                state.nack = request.error_detail.message
                logger.warning(
                    "node %s rejected %s version %s (keeps %s): %s",
                    client.node_id,
                    type_url,
                    state.sent_version,
                    request.version_info or "none",
                    state.nack,
                )
            else:
                state.nack = None
        names = _subscription(state, request)
        renamed = names != state.names
        state.names = names
        if request.response_nonce and not renamed:
            return []
        return [self._response(client, type_url, force=True)]

    def _response(
        self, client: ClientState, type_url: str, *, force: bool = False
    ) -> discovery_pb2.DiscoveryResponse | None:
        state = client.types[type_url]
        available = self._cache.resources[type_url]
        chosen = sorted(available if state.names is None else state.names & available.keys())
        content = tuple((name, available[name].SerializeToString()) for name in chosen)
        if not force and content == state.sent_content:
            return None
        state.sent_content = content
        state.sent_version = self._cache.version(type_url)
        state.sent_nonce = str(next(self._nonces))
        return discovery_pb2.DiscoveryResponse(
            version_info=state.sent_version,
            resources=[available[name] for name in chosen],
            type_url=type_url,
            nonce=state.sent_nonce,
        )


def _subscription(
    state: TypeState, request: discovery_pb2.DiscoveryRequest
) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    if WILDCARD in names or (not names and state.names is None):
        return None
    return names
