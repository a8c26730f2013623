"""`python -m services.control_plane` as a process: a plain grpcio client dials `xds:///m`.

It keeps its endpoints while the control plane is killed, and follows the restarted one; the
replicas' registrations reach it; SIGTERM ends it cleanly.
"""

from __future__ import annotations

import signal
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from services.common.pb import registration_pb2 as pb
from services.common.pb import registration_pb2_grpc as pb_grpc
from services.launcher.processes import start_service
from tests.unit.control_plane.helpers import WHO, mesh_file


class Backend:
    def __init__(self, name: str) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("hfmesh.test.Echo", {"Who": handler})]
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := check():
                return value
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def servers():
    started: list = []
    yield started
    for item in started:
        if isinstance(item, Backend):
            item.server.stop(None)
        else:
            item.stop(grace=5)


def test_process_restart_and_registration(tmp_path, monkeypatch, servers):
    one, two = Backend("one"), Backend("two")
    servers += [one, two]
    bootstrap = tmp_path / "bootstrap.json"
    args = [
        "--model_list",
        mesh_file(tmp_path, {"m": [one.address]}),
        "--bootstrap_file",
        str(bootstrap),
        "--health_interval",
        "0.2",
    ]
    plane = start_service("services.control_plane", args, ready_timeout=60)
    servers.append(plane)
    assert bootstrap.exists()
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(bootstrap))
    with grpc.insecure_channel("xds:///m") as channel:
        who = channel.unary_unary(WHO)
        assert who(b"", timeout=5) == b"one"
        plane.kill(signal.SIGKILL)
        plane.process.wait(timeout=10)
        assert {who(b"", timeout=5) for _ in range(5)} == {b"one"}  # served from its cache

        again = start_service("services.control_plane", args, port=plane.port, ready_timeout=60)
        servers.append(again)
        with grpc.insecure_channel(again.address) as control:
            registration = pb_grpc.RegistrationStub(control)
            lease = registration.Register(
                pb.RegisterRequest(
                    service="engine",
                    model="m",
                    backend="huggingface",
                    address=two.address,
                ),
                timeout=5,
            )
            _until(lambda: who(b"", timeout=5) == b"two", timeout=15)  # the client reconnected
            registration.Deregister(pb.DeregisterRequest(lease_id=lease.lease_id), timeout=5)
            _until(lambda: {who(b"", timeout=5) for _ in range(4)} == {b"one"})
    again.process.send_signal(signal.SIGTERM)
    assert again.process.wait(timeout=15) == 0
