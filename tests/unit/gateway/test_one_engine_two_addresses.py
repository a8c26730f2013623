"""One engine the gateway reaches at two addresses (a Service name from the model list beside
the pod IP the engine registered; compose did the same with container IPs), one of them
withdrawn while the engine loads: the address that stays becomes available once the engine
serves. The engine's health servicer used to forget the remaining watch when the other one
ended, so the model answered "no engine is ready" with its engine serving."""

from __future__ import annotations

import asyncio

from services.common.engine import Task
from services.common.model_list import Endpoints, MeshPlan, ModelEntry
from services.common.server import GrpcServiceRunner
from services.gateway.discovery import Endpoint
from services.gateway.routing import ReplicaRouter
from tests.unit.control_plane.helpers import eventually


async def test_the_address_that_stays_serves_once_the_engine_is_loaded():
    engine = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=1)
    port = await engine.start()  # NOT_SERVING: loading
    by_name, by_ip = f"localhost:{port}", f"127.0.0.1:{port}"
    entry = ModelEntry("m", "/models/m", Task.SEQUENCE_CLASSIFICATION, "huggingface")
    plan = MeshPlan(
        models=[entry],
        endpoints={"m": Endpoints(tokenizer=[by_name], engines={"huggingface": [by_name]})},
    )
    router = ReplicaRouter(plan)
    await router.start()
    try:
        router.apply_endpoints(
            {
                "m.tokenizer": [Endpoint(by_name)],
                "m.huggingface": [Endpoint(by_name), Endpoint(by_ip)],
            }
        )
        route = router.route("m")
        stays = router.replicas[by_name]
        # no watch has answered yet (nothing was awaited): these events mark their first answer
        watched = [stays.changed, router.replicas[by_ip].changed]
        await eventually(lambda: all(event.is_set() for event in watched), 30)
        assert not route.ready  # both saw NOT_SERVING
        router.apply_endpoints({"m.huggingface": [Endpoint(by_name)]})  # the IP withdrawn
        await eventually(lambda: not router._leaving, 30)  # its watch ended
        await asyncio.sleep(0.2)  # and the engine has seen it end
        await engine.set_serving(True)
        await eventually(lambda: stays.available, 10)
        assert route.ready and route.engine() is stays
    finally:
        await router.close()
        await engine.server.stop(0)
