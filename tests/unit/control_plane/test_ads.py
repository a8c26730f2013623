"""ADS on a raw stream: versions per type, nonces, ACK/NACK, pushes, reconnects, many clients."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from services.control_plane import resources
from services.control_plane.resources import CLUSTER, ENDPOINT, LISTENER
from services.control_plane.store import Publication, ServiceKey
from tests.unit.control_plane.helpers import WHO, eventually, mesh_file

M_HF = ServiceKey("m", "huggingface")


class RawStream:
    def __init__(self, plane, node_id: str = "raw") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.runner.bound_port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(timeout=20)
        self.node = base_pb2.Node(id=node_id)
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:  # cancelling a read() would cancel the whole call
        async for response in self.call:
            self.responses.put_nowait(response)

    async def send(
        self, type_url: str, names=(), version: str = "", nonce: str = "", error: str | None = None
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=self.node,
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def recv(self, timeout: float = 3.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing_arrives(self, within: float = 0.3) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await self.recv(within)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await self.channel.close()


def _endpoints(response: discovery_pb2.DiscoveryResponse) -> set[int]:
    ports = set()
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        for locality in assignment.endpoints:
            ports |= {e.endpoint.address.socket_address.port_value for e in locality.lb_endpoints}
    return ports


@pytest.fixture
async def plane(tmp_path, control_plane):
    return await control_plane(model_list=mesh_file(tmp_path, {"m": ["127.0.0.1:1001"]}))


async def test_versions_per_type_and_nonces(plane):
    stream = RawStream(plane)
    try:
        await stream.send(CLUSTER)  # wildcard
        clusters = await stream.recv()
        assert clusters.type_url == CLUSTER and clusters.version_info == "1" and clusters.nonce
        names = set()
        for packed in clusters.resources:
            names.add(packed.value[2 : 2 + packed.value[1]].decode())  # field 1: the name
        assert names == {
            "m.tokenizer",
            "m.huggingface",
            "g.tokenizer",
            "g.vllm",
            "g.huggingface",
            "tokenizer",
        }
        await stream.send(CLUSTER, version="1", nonce=clusters.nonce)  # ACK
        await stream.send(ENDPOINT, ["m.huggingface"])
        first = await stream.recv()
        assert first.type_url == ENDPOINT and _endpoints(first) == {1001}
        assert first.nonce != clusters.nonce
        await stream.send(ENDPOINT, ["m.huggingface"], first.version_info, first.nonce)
        await stream.nothing_arrives()

        plane.store.put("test", Publication(M_HF, "127.0.0.1:1002"))
        pushed = await stream.recv()  # only EDS moves; the cluster list did not change
        assert pushed.type_url == ENDPOINT and _endpoints(pushed) == {1001, 1002}
        assert int(pushed.version_info) > int(first.version_info)
        assert plane.cache.version(CLUSTER) == "1"
        await stream.send(ENDPOINT, ["m.huggingface"], pushed.version_info, pushed.nonce)
        await eventually(
            lambda: (
                plane.ads.clients
                and next(iter(plane.ads.clients.values())).types[ENDPOINT].acked_version
                == pushed.version_info
            )
        )

        # A request answering an older nonce is stale: ignored, subscription unchanged.
        await stream.send(ENDPOINT, ["g.vllm"], first.version_info, first.nonce)
        await stream.nothing_arrives()
        # A new subscription is answered at once.
        await stream.send(ENDPOINT, ["m.huggingface", "g.vllm"], pushed.version_info, pushed.nonce)
        both = await stream.recv()
        assert sorted(_cluster_names(both)) == ["g.vllm", "m.huggingface"]
    finally:
        await stream.close()


def _cluster_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    names = []
    for packed in response.resources:
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        names.append(assignment.cluster_name)
    return names


async def test_nack_keeps_previous_version_and_is_not_resent(plane, caplog):
    stream = RawStream(plane, node_id="nacker")
    try:
        await stream.send(ENDPOINT, ["m.huggingface"])
        good = await stream.recv()
        await stream.send(ENDPOINT, ["m.huggingface"], good.version_info, good.nonce)
        plane.store.put("test", Publication(M_HF, "127.0.0.1:1002"))
        rejected = await stream.recv()
        await stream.send(
            ENDPOINT, ["m.huggingface"], good.version_info, rejected.nonce, error="bad endpoint"
        )
        await stream.nothing_arrives()  # the rejected content is not sent again
        state = next(iter(plane.ads.clients.values())).types[ENDPOINT]
        assert state.acked_version == good.version_info and state.nack == "bad endpoint"
        assert "nacker rejected" in caplog.text and "bad endpoint" in caplog.text

        plane.store.put("test", Publication(M_HF, "127.0.0.1:1003"))
        fixed = await stream.recv()  # the next change is
        assert _endpoints(fixed) == {1001, 1002, 1003}
        await stream.send(ENDPOINT, ["m.huggingface"], fixed.version_info, fixed.nonce)
        await eventually(lambda: state.acked_version == fixed.version_info and state.nack is None)
    finally:
        await stream.close()


async def test_reconnect_gets_current_state_and_many_clients(plane):
    streams = [RawStream(plane, node_id=f"n{i}") for i in range(40)]
    try:
        for stream in streams:
            await stream.send(ENDPOINT, ["m.huggingface"])
        firsts = [await stream.recv() for stream in streams]
        assert all(_endpoints(r) == {1001} for r in firsts)
        assert len({r.nonce for r in firsts}) == len(firsts)
        plane.store.put("test", Publication(M_HF, "127.0.0.1:1002"))
        for stream in streams:
            assert _endpoints(await stream.recv()) == {1001, 1002}
    finally:
        for stream in streams:
            await stream.close()
    await eventually(lambda: not plane.ads.clients)
    plane.store.remove("test", M_HF, "127.0.0.1:1002")
    again = RawStream(plane)  # knows an old version, sends no nonce: gets the current state
    try:
        await again.send(ENDPOINT, ["m.huggingface"], version=firsts[0].version_info)
        current = await again.recv()
        assert _endpoints(current) == {1001}
        assert current.version_info == plane.cache.version(ENDPOINT)
    finally:
        await again.close()


async def test_unknown_type_is_ignored(plane):
    stream = RawStream(plane)
    try:
        await stream.send("type.googleapis.com/nope.Thing")
        await stream.nothing_arrives(0.2)
        await stream.send(LISTENER, ["m"])
        assert (await stream.recv()).type_url == LISTENER
    finally:
        await stream.close()


async def test_grpc_client_nack_leaves_its_endpoints(
    tmp_path, backends, control_plane, xds_bootstrap, monkeypatch
):
    one, two = await backends("one"), await backends("two")
    plane = await control_plane(model_list=mesh_file(tmp_path, {"m": [one.address]}))
    xds_bootstrap(plane, node_id="real-client")
    good = resources.load_assignment

    def without_locality(name, endpoints):  # gRPC rejects this (DESIGN.md §8)
        assignment = good(name, endpoints)
        if len(endpoints) > 1:
            for locality in assignment.endpoints:
                locality.ClearField("locality")
        return assignment

    monkeypatch.setattr(resources, "load_assignment", without_locality)
    async with grpc.aio.insecure_channel("xds:///m") as channel:
        assert (await channel.unary_unary(WHO)(b"", timeout=3)) == b"one"
        plane.store.put("test", Publication(M_HF, two.address))

        def nacked() -> bool:
            states = [c.types.get(ENDPOINT) for c in plane.ads.clients.values()]
            return any(s is not None and s.nack for s in states)

        await eventually(nacked)
        answers = {await channel.unary_unary(WHO)(b"", timeout=3) for _ in range(8)}
        assert answers == {b"one"}
