"""The Registration service: validation, leases, a storm of calls, traffic through xDS."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.pb import registration_pb2 as pb
from services.common.pb import registration_pb2_grpc as pb_grpc
from services.common.registration import Registrar
from services.control_plane.store import ServiceKey
from services.gateway.discovery import Discovery, Endpoint
from tests.unit.control_plane.helpers import WHO, eventually, mesh_file

M_HF = ServiceKey("m", "huggingface")


@pytest.fixture
async def stub_of():
    channels: list[grpc.aio.Channel] = []

    def make(plane) -> pb_grpc.RegistrationStub:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{plane.runner.bound_port}"))
        return pb_grpc.RegistrationStub(channels[-1])

    yield make
    for channel in channels:
        await channel.close()


def _engine(address: str, model: str = "m", backend: str = "huggingface", **kw):
    return pb.RegisterRequest(service="engine", model=model, backend=backend, address=address, **kw)


@pytest.mark.parametrize(
    "request_, why",
    [
        (_engine(""), "not host:port"),
        (_engine("127.0.0.1"), "not host:port"),
        (_engine("127.0.0.1:0"), "1..65535"),
        (_engine("127.0.0.1:65536"), "1..65535"),
        (_engine("127.0.0.1:http"), "1..65535"),
        (_engine("bad host:1"), "invalid host"),
        (_engine("127.0.0.1:5000", model="nope"), "unknown model"),
        (_engine("127.0.0.1:5000", backend="triton"), "backend"),
        (_engine("127.0.0.1:5000", backend=""), "backend"),
        (pb.RegisterRequest(service="router", model="m", address="127.0.0.1:1"), "service"),
        (
            pb.RegisterRequest(
                service="tokenizer", model="m", backend="vllm", address="127.0.0.1:1"
            ),
            "no backend",
        ),
    ],
)
async def test_malformed_registration_publishes_nothing(
    tmp_path, control_plane, stub_of, request_, why
):
    plane = await control_plane(model_list=mesh_file(tmp_path))
    before = plane.store.version
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub_of(plane).Register(request_, timeout=3)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in error.value.details()
    assert plane.store.version == before and plane.registration.leases == 0


async def test_register_renew_deregister_and_traffic(
    tmp_path, control_plane, stub_of, backends, xds_bootstrap
):
    one = await backends("one")
    plane = await control_plane(model_list=mesh_file(tmp_path))
    stub = stub_of(plane)
    lease = await stub.Register(_engine(one.address), timeout=3)
    assert lease.lease_id and lease.ttl_seconds == plane.registration.ttl_seconds
    again = await stub.Register(_engine(one.address, draining=True), timeout=3)
    assert again.lease_id == lease.lease_id
    assert [e.draining for e in plane.store.services()[M_HF]] == [True]
    await stub.Register(_engine(one.address), timeout=3)
    xds_bootstrap(plane)
    async with grpc.aio.insecure_channel("xds:///m") as channel:
        assert await channel.unary_unary(WHO)(b"", timeout=3) == b"one"
    assert (await stub.Renew(pb.RenewRequest(lease_id=lease.lease_id), timeout=3)).lease_id
    await stub.Deregister(pb.DeregisterRequest(lease_id=lease.lease_id), timeout=3)
    assert plane.store.services()[M_HF] == []
    await stub.Deregister(pb.DeregisterRequest(lease_id=lease.lease_id), timeout=3)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Renew(pb.RenewRequest(lease_id=lease.lease_id), timeout=3)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lease_expiry_withdraws(tmp_path, control_plane, stub_of):
    plane = await control_plane(model_list=mesh_file(tmp_path), lease_ttl=0.3)
    stub = stub_of(plane)
    kept = await stub.Register(_engine("127.0.0.1:5001"), timeout=3)
    await stub.Register(_engine("127.0.0.1:5002"), timeout=3)
    assert len(plane.store.services()[M_HF]) == 2

    async def renew_until_the_other_expires() -> bool:
        await stub.Renew(pb.RenewRequest(lease_id=kept.lease_id), timeout=3)
        return [e.port for e in plane.store.services()[M_HF]] == [5001]

    await eventually(renew_until_the_other_expires, timeout=3)
    assert plane.registration.leases == 1


async def test_registration_storm_leaves_the_store_consistent(tmp_path, control_plane, stub_of):
    """1,000 calls at once: 500 registrations, 100 repeats of them, 400 deregistrations."""
    plane = await control_plane(model_list=mesh_file(tmp_path))
    stub = stub_of(plane)
    addresses = [f"127.0.0.1:{6000 + i}" for i in range(500)]
    leases = await asyncio.gather(
        *(stub.Register(_engine(a), timeout=10) for a in addresses + addresses[:100])
    )
    assert [lease.lease_id for lease in leases[500:]] == [lease.lease_id for lease in leases[:100]]
    kept = set(addresses[400:])
    await asyncio.gather(
        *(
            stub.Deregister(pb.DeregisterRequest(lease_id=lease.lease_id), timeout=10)
            for lease in leases[:400]
        )
    )
    published = {f"{e.host}:{e.port}" for e in plane.store.services()[M_HF]}
    assert published == kept and plane.registration.leases == len(kept)
    await eventually(lambda: plane.cache.resources == _rendered(plane))


def _rendered(plane):
    from services.control_plane.resources import render

    return render(plane.store)


async def test_calls_are_counted_per_method_and_status(tmp_path, control_plane, stub_of):
    plane = await control_plane(model_list=mesh_file(tmp_path))
    stub = stub_of(plane)
    await stub.Register(_engine("127.0.0.1:5000"), timeout=3)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Register(_engine("127.0.0.1:5000", model="nope"), timeout=3)
    registry = plane.metrics.registry
    method = "hfmesh.registration.v1.Registration/Register"
    counted = {
        code: registry.get_sample_value(
            "hfmesh_control_plane_requests_total", {"operation": method, "code": code}
        )
        for code in ("OK", "INVALID_ARGUMENT")
    }
    assert counted == {"OK": 1.0, "INVALID_ARGUMENT": 1.0}
    latency = "hfmesh_control_plane_request_duration_seconds_count"
    assert registry.get_sample_value(latency, {"operation": method}) == 2.0


async def test_outside_kubernetes_static_replicas_stay_beside_registered_ones(
    tmp_path, control_plane
):
    """The launcher's configuration: static replicas are processes of their own; one that
    registers under its listed address stays one endpoint, one not registered stays listed."""
    listed = ["127.0.0.1:7001", "127.0.0.1:7002"]
    plane = await control_plane(model_list=mesh_file(tmp_path, {"m": listed}))
    address = f"127.0.0.1:{plane.runner.bound_port}"
    gateway = Discovery(address, ["m.huggingface"])
    await gateway.start(connect_timeout=10)
    replicas = [
        Registrar(address, service="engine", model="m", backend="huggingface", address=a)
        for a in ("127.0.0.1:7001", "127.0.0.1:7003")
    ]
    try:
        for replica in replicas:
            await replica.register()
        expected = [Endpoint(f"127.0.0.1:{port}") for port in (7001, 7002, 7003)]
        await eventually(lambda: gateway.endpoints.get("m.huggingface") == expected)
    finally:
        for replica in replicas:
            await replica.deregister()
        await gateway.close()
