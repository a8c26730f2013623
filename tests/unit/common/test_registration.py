"""The registration client against a real control plane on port 0, restarted on the same port."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.registration import Registrar, RegistrationError, advertised_address
from services.control_plane.app import ControlPlane
from services.control_plane.store import Endpoint, ServiceKey
from services.launcher.processes import free_port
from tests.unit.control_plane.helpers import Planes, eventually, mesh_file

M_HF = ServiceKey("m", "huggingface")


@pytest.fixture
async def planes(tmp_path):
    made = Planes(mesh_file(tmp_path))
    yield made
    await made.stop_all()


def _registrar(plane: ControlPlane, **overrides) -> Registrar:
    values = {
        "service": "engine",
        "model": "m",
        "backend": "huggingface",
        "address": "127.0.0.1:5001",
        "call_timeout": 1.0,
        **overrides,
    }
    return Registrar(f"127.0.0.1:{plane.runner.bound_port}", **values)


def _published(plane: ControlPlane, key: ServiceKey = M_HF) -> list[Endpoint]:
    return plane.store.services().get(key, [])


async def test_register_drain_deregister(planes):
    plane = await planes.start()
    registrar = _registrar(plane)
    await registrar.register()
    assert _published(plane) == [Endpoint("127.0.0.1", 5001)]
    assert plane.registration.leases == 1
    await registrar.drain()
    assert _published(plane) == [Endpoint("127.0.0.1", 5001, draining=True)]
    await registrar.deregister()
    assert _published(plane) == [] and plane.registration.leases == 0


async def test_renews_before_the_lease_expires(planes):
    plane = await planes.start(lease_ttl=0.3)
    registrar = _registrar(plane)
    await registrar.register()
    lease = plane.registration._leases[registrar.leases["m"]]
    expires_first = lease.timer.when()

    def renewed_twice_and_still_published() -> bool:
        assert _published(plane) == [Endpoint("127.0.0.1", 5001)]
        return lease.timer.when() > expires_first + 0.3

    await eventually(renewed_twice_and_still_published, timeout=3)
    assert plane.registration.leases == 1
    await registrar.deregister()


async def test_reregisters_after_a_control_plane_restart(planes):
    plane = await planes.start(lease_ttl=0.6)
    port = plane.runner.bound_port
    registrar = _registrar(plane)
    await registrar.register()
    await registrar.drain()
    await plane.stop(None)
    again = await planes.start(port=port, lease_ttl=0.6)
    assert _published(again) == []
    await eventually(lambda: _published(again) == [Endpoint("127.0.0.1", 5001, True)], 4)
    await registrar.deregister()
    assert _published(again) == []


async def test_reregisters_after_an_outage_longer_than_the_lease(planes):
    plane = await planes.start(lease_ttl=0.3)
    port = plane.runner.bound_port
    registrar = _registrar(plane)
    await registrar.register()
    await plane.stop(None)
    await eventually(lambda: time.monotonic() - registrar._last_contact > 0.3, timeout=2)
    again = await planes.start(port=port, lease_ttl=0.3)
    await eventually(lambda: _published(again) == [Endpoint("127.0.0.1", 5001)], 4)
    await registrar.deregister()
    assert _published(again) == []


async def test_tokenizer_registers_for_every_model(planes):
    plane = await planes.start()
    registrar = _registrar(plane, service="tokenizer", model=["m", "g"], backend="")
    await registrar.register()
    for model in ("m", "g"):
        assert _published(plane, ServiceKey(model, "tokenizer")) == [Endpoint("127.0.0.1", 5001)]
    await registrar.deregister()
    assert plane.registration.leases == 0


async def test_malformed_registration_is_an_error_at_once(planes):
    plane = await planes.start()
    registrar = _registrar(plane, model="nope")
    with pytest.raises(RegistrationError, match="INVALID_ARGUMENT.*unknown model 'nope'"):
        await registrar.register()
    await registrar.deregister()


async def test_unreachable_control_plane_at_start_is_a_clear_error(caplog):
    address = f"127.0.0.1:{free_port()}"
    registrar = Registrar(
        address,
        service="engine",
        model="m",
        backend="huggingface",
        address="127.0.0.1:5001",
        call_timeout=0.3,
        connect_timeout=1.0,
    )
    with pytest.raises(RegistrationError, match=f"control plane at {address} is unreachable"):
        await registrar.register()
    assert "retrying" in caplog.text
    await registrar.deregister()


async def test_a_control_plane_starting_late_is_waited_for(planes):
    port = free_port()
    registrar = Registrar(
        f"127.0.0.1:{port}",
        service="engine",
        model="m",
        backend="huggingface",
        address="127.0.0.1:5001",
        call_timeout=0.5,
        connect_timeout=10.0,
    )
    registering = asyncio.ensure_future(registrar.register())
    await eventually(lambda: registrar._channel.get_state() != grpc.ChannelConnectivity.IDLE)
    plane = await planes.start(port=port)
    await asyncio.wait_for(registering, 10)
    assert _published(plane) == [Endpoint("127.0.0.1", 5001)]
    await registrar.deregister()


def test_advertised_address():
    assert advertised_address("10.1.2.3", 5001, "cp:18000") == "10.1.2.3:5001"
    assert advertised_address("fd00::7", 5001, "cp:18000") == "[fd00::7]:5001"
    assert advertised_address("[fd00::7]", 5001, "cp:18000") == "[fd00::7]:5001"
    assert advertised_address("0.0.0.0", 5001, "127.0.0.1:18000") == "127.0.0.1:5001"
    assert advertised_address("::", 5001, "[::1]:18000") == "[::1]:5001"
