"""Supervisor, registration client and gateway subscriber together around a real control plane
process: `kill -9` of the control plane → restarted on its port, the replica registers again,
the subscriber kept its endpoints meanwhile and follows the new process."""

from __future__ import annotations

import os
import signal

import pytest

from services.common.registration import Registrar
from services.gateway.discovery import Discovery, Endpoint
from services.launcher.plan import ProcessSpec
from services.launcher.processes import free_port, grpc_serving
from services.launcher.supervisor import Supervisor
from tests.unit.control_plane.helpers import eventually, mesh_file


@pytest.fixture
def supervisor(tmp_path):
    lines: list[str] = []
    made = Supervisor(
        log_dir=tmp_path / "logs", initial_backoff=0.05, grace_seconds=5, report=lines.append
    )
    made.lines = lines  # type: ignore[attr-defined]
    yield made
    made.stop_all()


async def test_control_plane_killed_restarted_and_followed(tmp_path, supervisor):
    args = [
        "--model_list",
        mesh_file(tmp_path),
        "--health_interval",
        "0",
        "--lease_ttl",
        "2",
        "--host",
        "127.0.0.1",
    ]
    spec = ProcessSpec("control_plane", "services.control_plane", args, free_port())
    supervisor.add(spec)
    address = f"127.0.0.1:{spec.port}"
    await eventually(lambda: grpc_serving(address, timeout=0.5), timeout=30)

    registrar = Registrar(
        address,
        service="engine",
        model="m",
        backend="huggingface",
        address="127.0.0.1:5001",
        call_timeout=1.0,
    )
    discovery = Discovery(address, ["m.huggingface"], max_backoff=0.5)
    try:
        await registrar.register()
        await discovery.start(connect_timeout=5)
        mine = [Endpoint("127.0.0.1:5001")]
        await eventually(lambda: discovery.endpoints["m.huggingface"] == mine, timeout=2)

        lease = registrar.leases["m"]
        os.kill(supervisor.processes["control_plane"].process.pid, signal.SIGKILL)

        def restarted() -> bool:
            supervisor.poll()
            return supervisor.entries["control_plane"].restarts == 1

        await eventually(restarted, timeout=5)
        assert supervisor.lines[0].startswith("hfmesh: control_plane exited with -9 (SIGKILL)")
        assert discovery.endpoints["m.huggingface"] == mine  # kept while it was away
        # The new process knew nothing of the replica: it registered again (a new lease) ...
        await eventually(lambda: registrar.leases["m"] != lease, timeout=30)
        await eventually(lambda: discovery.connected, timeout=5)
        assert discovery.endpoints["m.huggingface"] == mine
        # ... and the subscriber follows the new process.
        await registrar.deregister()
        await eventually(lambda: discovery.endpoints["m.huggingface"] == [], timeout=2)
    finally:
        await discovery.close()
        await registrar.deregister()
