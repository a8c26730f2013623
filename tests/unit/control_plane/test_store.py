"""The store, the rendered xDS resources, the model list source, the bootstrap, the settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from services.common.errors import InvalidArgument
from services.control_plane.bootstrap import write_bootstrap
from services.control_plane.model_list import read_model_list
from services.control_plane.resources import ENDPOINT, LISTENER, ROUTE, render
from services.control_plane.store import (
    Endpoint,
    EndpointStore,
    Publication,
    ServiceKey,
    parse_address,
)
from tests.unit.control_plane.helpers import mesh_file

G_VLLM, G_HF = ServiceKey("g", "vllm"), ServiceKey("g", "huggingface")


def _unpack(resources, type_url, name, message):
    resources[type_url][name].Unpack(message)
    return message


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("engine-0.svc:50051", ("engine-0.svc", 50051)),
        ("[::1]:9", ("::1", 9)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


def test_sources_merge_draining_wins_and_health_withdraws():
    store = EndpointStore({"g": ("vllm", "huggingface")})
    calls: list[int] = []
    store.subscribe(lambda: calls.append(store.version))
    store.put("static", Publication(G_VLLM, "10.0.0.1:1"))
    store.put("registration", Publication(G_VLLM, "10.0.0.1:1", draining=True))
    store.put("registration", Publication(G_VLLM, "10.0.0.1:1", draining=True))  # no change
    assert store.services()[G_VLLM] == [Endpoint("10.0.0.1", 1, draining=True)]
    assert calls == [1, 2]
    store.set_healthy("10.0.0.1:1", False)
    assert store.services()[G_VLLM] == [] and store.services()[G_HF] == []
    store.set_healthy("10.0.0.1:1", True)
    store.replace("registration", [])
    assert store.services()[G_VLLM] == [Endpoint("10.0.0.1", 1)]
    assert not store.is_known_model("other") and EndpointStore().is_known_model("other")


M_HF, M_TOK = ServiceKey("m", "huggingface"), ServiceKey("m", "tokenizer")


def test_in_kubernetes_a_service_name_stands_in_only_while_no_pod_is_published():
    """Static endpoints there are Services over the very pods the other sources publish."""
    store = EndpointStore({"m": ("huggingface",)}, fallback_sources=("static",))
    store.replace("static", [Publication(M_HF, "hf-m:8081"), Publication(M_TOK, "tokenizer:50051")])
    assert store.services()[M_HF] == [Endpoint("hf-m", 8081)]
    # pod 1 ready: its EndpointSlice and its registration name the same pod IP
    store.replace("kubernetes", [Publication(M_HF, "10.0.0.1:8081")])
    store.put("registration", Publication(M_HF, "10.0.0.1:8081"))
    assert store.services()[M_HF] == [Endpoint("10.0.0.1", 8081)]
    assert store.services()[M_TOK] == [Endpoint("tokenizer", 50051)]  # no tokenizer pod yet
    store.put("registration", Publication(M_TOK, "10.0.0.9:50051"))
    assert store.services()[M_TOK] == [Endpoint("10.0.0.9", 50051)]
    # pod 2; then pod 1 terminating (draining) while still published
    store.replace(
        "kubernetes",
        [Publication(M_HF, "10.0.0.1:8081", draining=True), Publication(M_HF, "10.0.0.2:8081")],
    )
    store.put("registration", Publication(M_HF, "10.0.0.2:8081"))
    assert store.services()[M_HF] == [
        Endpoint("10.0.0.1", 8081, draining=True),
        Endpoint("10.0.0.2", 8081),
    ]
    # the withheld Service is still health-checked, so its health is known when it stands in
    assert "hf-m:8081" in store.addresses()
    store.set_healthy("hf-m:8081", False)
    # scaled to zero: nothing but the Service is left, and it answers nothing yet
    store.replace("kubernetes", [])
    store.remove("registration", M_HF, "10.0.0.1:8081")
    store.remove("registration", M_HF, "10.0.0.2:8081")
    assert store.services()[M_HF] == []
    store.set_healthy("hf-m:8081", True)
    assert store.services()[M_HF] == [Endpoint("hf-m", 8081)]


def test_outside_kubernetes_static_and_registered_replicas_are_merged_as_equals():
    """The launcher's static replicas are processes of their own: one not registered (yet) is
    still a replica beside the ones that are, and the same address is one endpoint."""
    store = EndpointStore({"m": ("huggingface",)})
    store.replace(
        "static", [Publication(M_HF, "127.0.0.1:7001"), Publication(M_HF, "127.0.0.1:7002")]
    )
    store.put("registration", Publication(M_HF, "127.0.0.1:7001"))
    store.put("registration", Publication(M_HF, "127.0.0.1:7003"))
    assert store.services()[M_HF] == [
        Endpoint("127.0.0.1", 7001),
        Endpoint("127.0.0.1", 7002),
        Endpoint("127.0.0.1", 7003),
    ]


def test_resources_carry_what_grpc_needs():
    store = EndpointStore({"g": ("vllm", "huggingface")})
    store.put("s", Publication(G_HF, "10.0.0.2:2"))
    store.put("s", Publication(G_HF, "10.0.0.3:3", draining=True))
    resources = render(store)
    manager = hcm_pb2.HttpConnectionManager()
    _unpack(resources, LISTENER, "g", listener_pb2.Listener()).api_listener.api_listener.Unpack(
        manager
    )
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert manager.rds.route_config_name == "g"
    assignment = _unpack(resources, ENDPOINT, "g.huggingface", endpoint_pb2.ClusterLoadAssignment())
    locality = assignment.endpoints[0]
    assert locality.HasField("locality") and locality.load_balancing_weight.value == 1
    assert [e.health_status for e in locality.lb_endpoints] == [1, 3]  # HEALTHY, DRAINING
    # `g` prefers vLLM; with no vLLM endpoint its route falls back to HF, then moves back.
    route = _unpack(resources, ROUTE, "g", route_pb2.RouteConfiguration())
    assert route.virtual_hosts[0].routes[0].route.cluster == "g.huggingface"
    store.put("s", Publication(G_VLLM, "10.0.0.4:4"))
    route = _unpack(render(store), ROUTE, "g", route_pb2.RouteConfiguration())
    assert route.virtual_hosts[0].routes[0].route.cluster == "g.vllm"


def test_model_list_source(tmp_path):
    mesh = read_model_list(mesh_file(tmp_path, {"m": ["127.0.0.1:7001"]}))
    assert mesh.models == {"m": ("huggingface",), "g": ("vllm", "huggingface")}
    assert mesh.publications == [Publication(ServiceKey("m", "huggingface"), "127.0.0.1:7001")]
    with pytest.raises(InvalidArgument, match="port must be"):
        read_model_list(mesh_file(tmp_path, {"m": ["127.0.0.1:99999"]}))


def test_bootstrap_lists_insecure_first(tmp_path):
    path = write_bootstrap(tmp_path / "x" / "bootstrap.json", "127.0.0.1:18000", "node-1")
    document = json.loads(path.read_text())
    server = document["xds_servers"][0]
    assert server["server_uri"] == "127.0.0.1:18000"
    assert server["channel_creds"][0] == {"type": "insecure"}
    assert server["server_features"] == ["ignore_resource_deletion"]
    assert document["node"]["id"] == "node-1"


def test_help():
    answer = subprocess.run(
        [sys.executable, "-m", "services.control_plane", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0 and "--lease_ttl" in answer.stdout
    assert "HFMESH_MODEL_LIST" in answer.stdout
