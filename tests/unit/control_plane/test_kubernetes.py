"""The EndpointSlice source against a real HTTP server speaking the list/watch JSON."""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from services.common.registration import Registrar
from services.control_plane.kubernetes import MODEL_LABEL, ROLE_LABEL
from services.control_plane.store import Endpoint, ServiceKey
from services.gateway.discovery import Discovery
from services.gateway.discovery import Endpoint as DiscoveredEndpoint
from tests.unit.control_plane.helpers import eventually, mesh_file

M_HF, M_TOK = ServiceKey("m", "huggingface"), ServiceKey("m", "tokenizer")
PATH = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"


def endpoint_slice(
    name: str,
    role: str,
    hosts: list[str],
    version: str,
    *,
    model: str = "m",
    terminating: bool = False,
    ready: bool = True,
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": version,
            "labels": {ROLE_LABEL: role, MODEL_LABEL: model},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [host],
                "conditions": {
                    "ready": ready and not terminating,
                    "serving": True,
                    "terminating": terminating,
                },
            }
            for host in hosts
        ],
        "ports": [{"name": "metrics", "port": 9090}, {"name": "grpc", "port": 50051}],
    }


class FakeApiServer:
    """Lists `self.slices`; each watch streams what the test queues, until told to close."""

    def __init__(self) -> None:
        self.slices: list[dict] = []
        self.list_version = "10"
        self.events: queue.Queue[dict | None] = queue.Queue()
        self.requests: list[dict[str, list[str]]] = []
        self.closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # watches are chunked, as the API server's are

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                fake.requests.append(query)
                if url.path != PATH:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if query.get("watch") != ["true"]:
                    body = json.dumps(
                        {
                            "apiVersion": "discovery.k8s.io/v1",
                            "kind": "EndpointSliceList",
                            "metadata": {"resourceVersion": fake.list_version},
                            "items": fake.slices,
                        }
                    ).encode()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while not fake.closing.is_set():
                    try:
                        event = fake.events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if event is None:
                        break  # the watch's server-side timeout
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if event["type"] == "ERROR":
                        break  # the API server ends a watch after an error
                self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def watches(self) -> list[dict[str, list[str]]]:
        return [q for q in self.requests if q.get("watch") == ["true"]]

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api_server():
    server = FakeApiServer()
    server.thread.start()
    yield server
    server.close()


async def test_list_watch_resume_and_resync(tmp_path, control_plane, api_server):
    api_server.slices = [
        endpoint_slice("m-hf-1", "huggingface", ["10.0.0.1"], "9"),
        endpoint_slice("other", "huggingface", ["10.9.9.9"], "9", model="x"),
    ]
    plane = await control_plane(
        model_list=mesh_file(tmp_path),
        kubernetes=True,
        kubernetes_host=api_server.url,
        kubernetes_namespace="ns",
    )
    store = plane.store

    def published(key: ServiceKey) -> list[Endpoint]:
        return store.services()[key]

    await eventually(lambda: published(M_HF) == [Endpoint("10.0.0.1", 50051)])
    await eventually(lambda: len(api_server.watches()) == 1)
    assert api_server.watches()[0]["resourceVersion"] == ["10"]
    assert api_server.watches()[0]["labelSelector"] == [ROLE_LABEL]

    api_server.events.put(
        {
            "type": "ADDED",
            "object": endpoint_slice("m-tok", "tokenizer", ["10.0.1.1", "10.0.1.2"], "11"),
        }
    )
    api_server.events.put(
        {
            "type": "MODIFIED",
            "object": endpoint_slice("m-hf-1", "huggingface", ["10.0.0.1"], "12", terminating=True),
        }
    )
    await eventually(
        lambda: (
            published(M_HF) == [Endpoint("10.0.0.1", 50051, draining=True)]
            and len(published(M_TOK)) == 2
        )
    )

    api_server.events.put(None)  # the watch expires: resumed from the last version seen
    await eventually(lambda: len(api_server.watches()) == 2)
    assert api_server.watches()[1]["resourceVersion"] == ["12"]
    assert plane.kubernetes.lists == 1

    # Meanwhile the slices changed and the version is gone: 410 → a fresh list.
    api_server.slices = [
        endpoint_slice("m-hf-2", "huggingface", ["10.0.0.2"], "20"),
        endpoint_slice("m-hf-3", "huggingface", ["10.0.0.3"], "20", ready=False),
    ]
    api_server.list_version = "20"
    api_server.events.put(
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version: 12 (15)",
            },
        }
    )
    await eventually(
        lambda: published(M_HF) == [Endpoint("10.0.0.2", 50051)] and published(M_TOK) == []
    )
    assert plane.kubernetes.lists == 2
    await eventually(lambda: api_server.watches()[-1]["resourceVersion"] == ["20"])

    api_server.events.put(
        {"type": "DELETED", "object": endpoint_slice("m-hf-2", "huggingface", ["10.0.0.2"], "21")}
    )
    await eventually(lambda: published(M_HF) == [])


def test_outside_a_cluster_is_a_clear_error(monkeypatch):
    from services.common.errors import InvalidArgument
    from services.control_plane.kubernetes import api_client

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(InvalidArgument, match="--kubernetes_host"):
        api_client(None)


async def test_a_pod_is_one_endpoint_for_the_gateway(tmp_path, control_plane, api_server):
    """The deployed configuration: the model list names the Service (`hf-m:50051`), each pod
    registers at its pod IP and its EndpointSlice publishes the same address. A gateway's
    subscriber sees one endpoint per pod, and the Service only while there is no pod."""
    plane = await control_plane(
        model_list=mesh_file(tmp_path, {"m": ["hf-m:50051"]}),
        kubernetes=True,
        kubernetes_host=api_server.url,
        kubernetes_namespace="ns",
    )
    address = f"127.0.0.1:{plane.runner.bound_port}"
    gateway = Discovery(address, ["m.huggingface"])
    await gateway.start(connect_timeout=10)
    pods: list[Registrar] = []

    def seen() -> list[DiscoveredEndpoint]:
        return gateway.endpoints.get("m.huggingface", [])

    async def pod_up(host: str, hosts: list[str], version: str) -> None:
        pods.append(
            Registrar(
                address, service="engine", model="m", backend="huggingface", address=f"{host}:50051"
            )
        )
        await pods[-1].register()
        slice_ = endpoint_slice("hf-m-abc", "huggingface", hosts, version)
        api_server.events.put({"type": "MODIFIED" if pods[1:] else "ADDED", "object": slice_})

    try:
        await eventually(lambda: seen() == [DiscoveredEndpoint("hf-m:50051")])
        await eventually(lambda: len(api_server.watches()) == 1)
        await pod_up("10.0.0.1", ["10.0.0.1"], "11")
        await eventually(lambda: seen() == [DiscoveredEndpoint("10.0.0.1:50051")])
        await pod_up("10.0.0.2", ["10.0.0.1", "10.0.0.2"], "12")
        await eventually(
            lambda: (
                seen()
                == [DiscoveredEndpoint("10.0.0.1:50051"), DiscoveredEndpoint("10.0.0.2:50051")]
            )
        )
        # scaled to zero: the slice is deleted and the pods deregister
        slice_ = endpoint_slice("hf-m-abc", "huggingface", [], "13")
        api_server.events.put({"type": "DELETED", "object": slice_})
        for pod in pods:
            await pod.deregister()
        await eventually(lambda: seen() == [DiscoveredEndpoint("hf-m:50051")])
    finally:
        await gateway.close()
