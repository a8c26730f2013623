"""`ReplicaRouter.apply_endpoints`: the control plane's view of each service becomes the routes,
with real gRPC servers behind the addresses (health, and a call that waits when told to)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.engine import Task
from services.common.errors import Unavailable
from services.common.model_list import Endpoints, MeshPlan, ModelEntry
from services.gateway.discovery import Endpoint
from services.gateway.routing import ReplicaRouter
from tests.unit.control_plane.helpers import eventually

WAIT = "/hfmesh.test.Slow/Wait"


class Server:
    """grpc.health.v1 SERVING, and `Wait`, which answers once `release` is set."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.entered, self.release = asyncio.Event(), asyncio.Event()

        async def wait(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.entered.set()
            await self.release.wait()
            return b"done"

        handler = grpc.unary_unary_rpc_method_handler(wait)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("hfmesh.test.Slow", {"Wait": handler})]
        )
        self.address = ""

    async def start(self) -> Server:
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        return self


@pytest.fixture
async def servers():
    started: list[Server] = []

    async def make() -> Server:
        started.append(await Server().start())
        return started[-1]

    yield make
    for server in started:
        server.release.set()
        await server.server.stop(None)


def _plan(tokenizer: str, engine: str) -> MeshPlan:
    """`m` on HF (static engine and tokenizer), `g` on vLLM with HF fallback (same tokenizer)."""
    m = ModelEntry("m", "/models/m", Task.TEXT_EMBEDDING, "huggingface")
    g = ModelEntry("g", "/models/g", Task.TEXT_GENERATION, "vllm", fallback="huggingface")
    return MeshPlan(
        models=[m, g],
        endpoints={
            "m": Endpoints(tokenizer=[tokenizer], engines={"huggingface": [engine]}),
            "g": Endpoints(tokenizer=[tokenizer]),
        },
    )


@pytest.fixture
async def router(servers):
    tokenizer, engine = await servers(), await servers()
    made = ReplicaRouter(_plan(tokenizer.address, engine.address))
    await made.start()
    made.servers = {"tokenizer": tokenizer, "engine": engine}  # type: ignore[attr-defined]
    yield made
    await made.close()


def _engines(router: ReplicaRouter, model: str) -> list[tuple[str, list[str]]]:
    return [(b, [r.address for r in rs]) for b, rs in router.route(model).engines]


async def test_a_new_address_gets_its_own_replica_and_takes_new_calls(router, servers):
    static = router.servers["engine"].address
    first = router.replicas[static]
    added = await servers()
    router.apply_endpoints({"m.huggingface": [Endpoint(static), Endpoint(added.address)]})
    assert _engines(router, "m") == [("huggingface", [static, added.address])]
    assert router.replicas[static] is first  # kept, with its load
    second = router.replicas[added.address]
    assert second.channel is not first.channel
    await eventually(lambda: second.available)
    first.in_flight = 1
    assert router.route("m").engine() is second


async def test_a_draining_replica_takes_no_new_calls(router, servers):
    static = router.servers["engine"].address
    other = await servers()
    router.apply_endpoints(
        {"m.huggingface": [Endpoint(static, draining=True), Endpoint(other.address)]}
    )
    route = router.route("m")
    await eventually(lambda: route.ready)
    assert {route.engine().address for _ in range(6)} == {other.address}
    assert router.replicas[static].draining and static in dict(_engines(router, "m"))["huggingface"]
    router.apply_endpoints({"m.huggingface": [Endpoint(static, draining=True)]})
    assert not route.ready
    with pytest.raises(Unavailable):
        route.engine()
    router.apply_endpoints({"m.huggingface": [Endpoint(static)]})  # back from draining
    assert route.engine().address == static


async def test_a_replica_that_left_is_out_at_once_and_closes_after_its_calls(router):
    server = router.servers["engine"]
    replica = router.replicas[server.address]
    await eventually(lambda: replica.available)
    call = asyncio.ensure_future(replica.channel.unary_unary(WAIT)(b"", timeout=10))
    await asyncio.wait_for(server.entered.wait(), 5)
    router.apply_endpoints({"m.huggingface": []})
    assert server.address not in router.replicas
    assert router.route("m").engines == []
    with pytest.raises(Unavailable):
        router.route("m").engine()
    await asyncio.sleep(0.2)  # time enough for a close to cancel it
    assert not call.done()  # still running: the channel waits for it
    server.release.set()
    assert await call == b"done"
    await eventually(lambda: not router._leaving)


async def test_backends_keep_their_order_and_a_shared_tokenizer_stays(router, servers):
    tokenizer = router.servers["tokenizer"].address
    vllm, hf = await servers(), await servers()
    router.apply_endpoints(
        {"g.huggingface": [Endpoint(hf.address)], "g.vllm": [Endpoint(vllm.address)]}
    )
    assert _engines(router, "g") == [("vllm", [vllm.address]), ("huggingface", [hf.address])]
    router.apply_endpoints({"g.tokenizer": []})  # `m` still uses it
    assert router.route("g").tokenizers == [] and tokenizer in router.replicas
    assert [r.address for r in router.route("m").tokenizers] == [tokenizer]
    before = dict(router.replicas)
    router.apply_endpoints(
        {
            "x.huggingface": [Endpoint("127.0.0.1:1")],  # a model this gateway does not serve
            "tokenizer": [Endpoint("127.0.0.1:2")],  # the mesh-wide service: not a route
            "m.onnx": [Endpoint("127.0.0.1:3")],
        }
    )
    assert router.replicas == before


async def test_idle_replicas_take_turns_whatever_the_other_pools_pick(router, servers):
    addresses = [router.servers["engine"].address, *[(await servers()).address for _ in "ab"]]
    router.apply_endpoints({"m.huggingface": [Endpoint(a) for a in addresses]})
    route = router.route("m")
    await eventually(lambda: all(r.available for _, rs in route.engines for r in rs))
    picked = []
    for _ in range(6):  # as a request does: tokenizer, engine, tokenizer
        route.tokenizer()
        picked.append(route.engine().address)
        route.tokenizer()
    assert sorted(picked) == sorted(addresses * 2)
