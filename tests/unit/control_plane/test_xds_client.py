"""A plain grpcio client with an xDS bootstrap dials `xds:///<service>` via the control plane."""

from __future__ import annotations

import grpc

from services.control_plane.store import Publication, ServiceKey
from tests.unit.control_plane.helpers import WHO, eventually, mesh_file

M_HF = ServiceKey("m", "huggingface")


async def _who(channel: grpc.aio.Channel) -> str:
    return (await channel.unary_unary(WHO)(b"", timeout=3)).decode()


async def test_client_reaches_model_list_endpoint(tmp_path, backends, control_plane, xds_bootstrap):
    one = await backends("one")
    plane = await control_plane(model_list=mesh_file(tmp_path, {"m": [one.address]}))
    xds_bootstrap(plane)
    for target in ("xds:///m", "xds:///m.huggingface"):
        async with grpc.aio.insecure_channel(target) as channel:
            assert await _who(channel) == "one"
    await eventually(lambda: not plane.ads.clients)  # the client closed its ADS stream


async def test_traffic_follows_the_store(tmp_path, backends, control_plane, xds_bootstrap):
    one, two = await backends("one"), await backends("two")
    plane = await control_plane(model_list=mesh_file(tmp_path, {"m": [one.address]}))
    xds_bootstrap(plane)
    async with grpc.aio.insecure_channel("xds:///m") as channel:
        assert await _who(channel) == "one"
        plane.store.put("test", Publication(M_HF, two.address))
        seen: set[str] = set()

        async def both_answer() -> bool:
            seen.add(await _who(channel))
            return seen == {"one", "two"}

        await eventually(both_answer)
        plane.store.replace("static", [])

        async def only_two() -> bool:
            return {await _who(channel) for _ in range(6)} == {"two"}

        await eventually(only_two)
        plane.store.put("test", Publication(M_HF, two.address, draining=True))
        plane.store.put("test", Publication(M_HF, one.address))

        async def draining_skipped() -> bool:
            return {await _who(channel) for _ in range(6)} == {"one"}

        await eventually(draining_skipped)


async def test_alias_falls_back_and_returns(tmp_path, backends, control_plane, xds_bootstrap):
    vllm, hf = await backends("vllm"), await backends("hf")
    plane = await control_plane(model_list=mesh_file(tmp_path))
    plane.store.put("test", Publication(ServiceKey("g", "huggingface"), hf.address))
    xds_bootstrap(plane)
    async with grpc.aio.insecure_channel("xds:///g") as channel:
        assert await _who(channel) == "hf"
        plane.store.put("test", Publication(ServiceKey("g", "vllm"), vllm.address))

        async def on_vllm() -> bool:
            return await _who(channel) == "vllm"

        await eventually(on_vllm)


async def test_health_withdraws_and_restores(tmp_path, backends, control_plane, xds_bootstrap):
    one, two = await backends("one"), await backends("two")
    plane = await control_plane(
        model_list=mesh_file(tmp_path, {"m": [one.address, two.address]}),
        health_interval=0.05,
        health_timeout=0.5,
    )
    xds_bootstrap(plane)
    async with grpc.aio.insecure_channel("xds:///m") as channel:
        await one.set_serving(False)

        async def only_two() -> bool:
            return {await _who(channel) for _ in range(6)} == {"two"}

        await eventually(only_two)
        await one.set_serving(True)
        seen: set[str] = set()

        async def both() -> bool:
            seen.add(await _who(channel))
            return seen == {"one", "two"}

        await eventually(both)
        await two.server.stop(None)  # dies: no answer at all
        await eventually(
            lambda: two.address not in {f"{e.host}:{e.port}" for e in plane.store.services()[M_HF]}
        )
        assert {await _who(channel) for _ in range(4)} == {"one"}
