"""Control plane fixtures: a control plane on port 0, tiny named backends, an xDS bootstrap."""

from __future__ import annotations

import pytest

from services.control_plane.app import ControlPlane
from services.control_plane.bootstrap import write_bootstrap
from services.control_plane.settings import ControlPlaneSettings
from tests.unit.control_plane.helpers import Backend


@pytest.fixture
async def backends():
    started: list[Backend] = []

    async def make(name: str) -> Backend:
        started.append(await Backend(name).start())
        return started[-1]

    yield make
    for backend in started:
        await backend.server.stop(None)


@pytest.fixture
async def control_plane(tmp_path):
    """`await control_plane(model_list=..., **settings)` → a started ControlPlane (port 0)."""
    started: list[ControlPlane] = []

    async def make(**overrides) -> ControlPlane:
        values = {"host": "127.0.0.1", "port": 0, "health_interval": 0, **overrides}
        plane = ControlPlane(ControlPlaneSettings(**values))
        await plane.start()
        started.append(plane)
        return plane

    yield make
    for plane in started:
        await plane.stop(None)


@pytest.fixture
def xds_bootstrap(tmp_path, monkeypatch):
    """Point this process's gRPC xDS client at a control plane."""

    def use(plane: ControlPlane, node_id: str = "test-node") -> None:
        path = write_bootstrap(
            tmp_path / "bootstrap.json", f"127.0.0.1:{plane.runner.bound_port}", node_id
        )
        monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(path))

    return use
