"""The gateway's ADS subscriber against a real control plane (and a scripted one for NACKs)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from services.common.model_list import load_model_list
from services.control_plane import resources
from services.control_plane.model_list import SOURCE as STATIC
from services.control_plane.store import Endpoint as Published
from services.control_plane.store import Publication, ServiceKey
from services.gateway.discovery import (
    ENDPOINT_TYPE,
    Discovery,
    DiscoveryError,
    Endpoint,
    subscriptions,
)
from services.launcher.processes import free_port
from tests.unit.control_plane.helpers import Planes, eventually, mesh_file

M_HF = ServiceKey("m", "huggingface")
SERVICES = ["m.huggingface", "m.tokenizer", "tokenizer"]


@pytest.fixture
async def planes(tmp_path):
    made = Planes(mesh_file(tmp_path, {"m": ["127.0.0.1:1001"]}))
    yield made
    await made.stop_all()


@pytest.fixture
async def discoveries():
    started: list[Discovery] = []

    async def make(
        address: str, services=SERVICES, connect_timeout: float = 3.0, **kw
    ) -> Discovery:
        started.append(Discovery(address, services, **kw))
        await started[-1].start(connect_timeout)
        return started[-1]

    yield make
    for discovery in started:
        await discovery.close()


def _address(plane) -> str:
    return f"127.0.0.1:{plane.runner.bound_port}"


async def test_added_draining_removed_reach_the_subscriber(planes, discoveries):
    plane = await planes.start()
    seen: list[dict] = []
    discovery = await discoveries(_address(plane), on_change=seen.append)
    changes = discovery.changes()
    assert (
        seen
        == [{"m.huggingface": [Endpoint("127.0.0.1:1001")], "m.tokenizer": [], "tokenizer": []}]
        == [discovery.endpoints]
    )
    assert discovery.connected and discovery.version == plane.cache.version(ENDPOINT_TYPE)

    plane.store.put("test", Publication(M_HF, "127.0.0.1:1002"))
    assert await asyncio.wait_for(anext(changes), 2) == {
        "m.huggingface": [Endpoint("127.0.0.1:1001"), Endpoint("127.0.0.1:1002")]
    }
    plane.store.put("test", Publication(M_HF, "127.0.0.1:1002", draining=True))
    assert await asyncio.wait_for(anext(changes), 2) == {
        "m.huggingface": [Endpoint("127.0.0.1:1001"), Endpoint("127.0.0.1:1002", True)]
    }
    plane.store.put("test", Publication(ServiceKey("m", "tokenizer"), "127.0.0.1:2000"))
    assert await asyncio.wait_for(anext(changes), 2) == {
        "m.tokenizer": [Endpoint("127.0.0.1:2000")],
        "tokenizer": [Endpoint("127.0.0.1:2000")],
    }
    plane.store.remove("test", M_HF, "127.0.0.1:1002")
    assert await asyncio.wait_for(anext(changes), 2) == {
        "m.huggingface": [Endpoint("127.0.0.1:1001")]
    }
    last_sent = plane.cache.version(ENDPOINT_TYPE)
    plane.store.put("test", Publication(ServiceKey("g", "vllm"), "127.0.0.1:3000"))
    await changes.aclose()
    assert len(seen) == 5  # g.vllm is not subscribed: no change
    # What the client saw last is ACKed; a change outside its subscription is not sent to it.
    await eventually(lambda: _acked(plane) == last_sent, 2)


def _acked(plane) -> str | None:
    clients = list(plane.ads.clients.values())
    return clients[0].types[ENDPOINT_TYPE].acked_version if clients else None


async def test_keeps_endpoints_while_the_control_plane_is_away_and_follows_its_return(
    planes, discoveries
):
    plane = await planes.start()
    port = plane.runner.bound_port
    plane.store.put("test", Publication(M_HF, "127.0.0.1:1002"))
    discovery = await discoveries(_address(plane), max_backoff=0.5)
    known = [Endpoint("127.0.0.1:1001"), Endpoint("127.0.0.1:1002")]
    await eventually(lambda: discovery.endpoints.get("m.huggingface") == known, 2)

    await plane.stop(None)
    await eventually(lambda: not discovery.connected, 2)
    assert discovery.endpoints["m.huggingface"] == known

    again = await planes.start(port=port)
    again.store.put("test", Publication(M_HF, "127.0.0.1:1003"))
    await eventually(
        lambda: (
            discovery.endpoints["m.huggingface"]
            == [Endpoint("127.0.0.1:1001"), Endpoint("127.0.0.1:1003")]
        ),
        4,
    )
    again.store.remove(STATIC, M_HF, "127.0.0.1:1001")
    await eventually(
        lambda: discovery.endpoints["m.huggingface"] == [Endpoint("127.0.0.1:1003")], 2
    )


async def test_unreachable_control_plane_at_start_is_a_clear_error(discoveries):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(DiscoveryError, match=f"control plane at {address} is unreachable"):
        await discoveries(address, connect_timeout=0.5)


def test_subscriptions_of_a_model_list(tmp_path):
    plan = load_model_list(mesh_file(tmp_path))
    assert subscriptions(plan) == [
        "m.tokenizer",
        "m.huggingface",
        "g.tokenizer",
        "g.vllm",
        "g.huggingface",
    ]


async def test_every_service_when_none_is_named(planes, discoveries):
    plane = await planes.start()
    discovery = await discoveries(_address(plane), services=())
    await eventually(
        lambda: set(discovery.endpoints) == set(plane.cache.resources[resources.ENDPOINT]), 2
    )
    assert discovery.endpoints["g.vllm"] == []


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Sends a good EDS response, a bad one, a good one; records what the client answers."""

    def __init__(self) -> None:
        self.requests: list[discovery_pb2.DiscoveryRequest] = []

    async def StreamAggregatedResources(self, request_iterator, context):
        def good(version: str, port: int) -> discovery_pb2.DiscoveryResponse:
            assignment = resources.load_assignment("m.huggingface", [Published("10.0.0.1", port)])
            packed = any_pb2.Any()
            packed.Pack(assignment)
            return discovery_pb2.DiscoveryResponse(
                version_info=version,
                nonce=f"n{version}",
                type_url=ENDPOINT_TYPE,
                resources=[packed],
            )

        bad = good("2", 1)
        bad.resources[0].Pack(cluster_pb2.Cluster(name="m.huggingface"))
        script = [good("1", 1001), bad, good("3", 1003)]
        async for request in request_iterator:
            self.requests.append(request)
            if script:
                yield script.pop(0)


async def test_nack_keeps_the_applied_version(discoveries):
    server = grpc.aio.server()
    scripted = ScriptedAds()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(scripted, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        seen: list[dict] = []
        discovery = await discoveries(f"127.0.0.1:{port}", ["m.huggingface"], on_change=seen.append)
        await eventually(lambda: len(scripted.requests) == 4, 2)
        first, ack1, nack, ack3 = scripted.requests
        assert first.node.id == "hfmesh-gateway" and not first.response_nonce
        assert list(first.resource_names) == ["m.huggingface"]
        assert (ack1.version_info, ack1.response_nonce, ack1.HasField("error_detail")) == (
            "1",
            "n1",
            False,
        )
        assert (nack.version_info, nack.response_nonce) == ("1", "n2")
        assert "Cluster" in nack.error_detail.message
        assert (ack3.version_info, ack3.response_nonce, ack3.HasField("error_detail")) == (
            "3",
            "n3",
            False,
        )
        assert [change["m.huggingface"][0].address for change in seen] == [
            "10.0.0.1:1001",
            "10.0.0.1:1003",
        ]
        assert discovery.version == "3"
    finally:
        await server.stop(None)
