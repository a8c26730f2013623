"""The long-lived objects of one gateway app, kept on `app.state.gateway`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request

from services.common.logs import new_request_id
from services.gateway.admission import Admission
from services.gateway.core import MeshClient
from services.gateway.grpc_clients import CallContext
from services.gateway.kserve.serving import KServeServing
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai.serving import GenerationServing
from services.gateway.openai.serving_pooling import PoolingServing
from services.gateway.routing import ReplicaRouter
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    routes: ReplicaRouter
    mesh: MeshClient
    metrics: GatewayMetrics
    generation: GenerationServing
    pooling: PoolingServing
    kserve: KServeServing
    admission: Admission

    def call(self, request: Request) -> CallContext:
        request_id = request.scope.get("state", {}).get("request_id") or new_request_id()
        return CallContext(
            request_id=request_id, deadline=time.monotonic() + self.settings.request_timeout
        )


def build_state(
    settings: GatewaySettings, routes: ReplicaRouter, metrics: GatewayMetrics
) -> GatewayState:
    mesh = MeshClient(routes, settings)
    generation = GenerationServing(mesh, metrics)
    return GatewayState(
        settings=settings,
        routes=routes,
        mesh=mesh,
        metrics=metrics,
        generation=generation,
        pooling=PoolingServing(mesh, owned_by=settings.served_by, created=int(time.time())),
        kserve=KServeServing(mesh, generation),
        admission=Admission(settings, routes),
    )


def gateway(request: Request) -> GatewayState:
    return request.app.state.gateway
