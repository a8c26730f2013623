"""A gateway with `control_plane` set routes over what the control plane publishes, and keeps
its last known replicas when the control plane goes away (in process, real sockets)."""

from __future__ import annotations

import httpx

from services.control_plane.app import ControlPlane
from services.control_plane.settings import ControlPlaneSettings
from services.control_plane.store import Publication, ServiceKey
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import MODELS, serve_gateway


async def test_routes_follow_the_control_plane_and_outlive_it(mesh):
    plane = ControlPlane(ControlPlaneSettings(host="127.0.0.1", port=0, health_interval=0))
    await plane.start()
    # The model list names no engine: the control plane is where the gateway learns of it.
    plan = mesh.plan(models={"sentiment": MODELS["sentiment"]}, engines={"huggingface": []})
    plane.store.put(
        "test", Publication(ServiceKey("sentiment", "tokenizer"), mesh.tokenizer_address)
    )
    plane.store.put(
        "test", Publication(ServiceKey("sentiment", "huggingface"), mesh.engine_address)
    )
    settings = GatewaySettings(control_plane=f"127.0.0.1:{plane.runner.bound_port}")
    try:
        async with serve_gateway(settings, plan) as (url, app):
            routes = app.state.gateway.routes
            assert [b for b, _ in routes.route("sentiment").engines] == ["huggingface"]
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                body = {"instances": ["a fine day"]}
                reply = await http.post("/v1/models/sentiment:predict", json=body)
                assert reply.status_code == 200, reply.text
                await plane.stop(None)
                reply = await http.post("/v1/models/sentiment:predict", json=body)
                assert reply.status_code == 200, reply.text
                assert (await http.get("/v2/health/ready")).status_code == 200
                assert mesh.engine_address in routes.replicas
    finally:
        await plane.stop(None)  # a second stop does nothing
