"""The long-lived objects of one gateway app, kept on `app.state.gateway`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.requests import Request

from services.common.errors import InvalidArgument
from services.common.logs import new_request_id
from services.gateway.admission import Admission
from services.gateway.core import MeshClient
from services.gateway.grpc_clients import CallContext
from services.gateway.kserve.serving import KServeServing
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai.serving import GenerationServing
from services.gateway.openai.serving_pooling import PoolingServing
from services.gateway.openai.serving_vllm import VllmExtrasServing
from services.gateway.quota import Budgets, TenantMetrics
from services.gateway.routing import ReplicaRouter
from services.gateway.settings import GatewaySettings

TIMEOUT_HEADER = "X-Request-Timeout"


@dataclass
class GatewayState:
    settings: GatewaySettings
    routes: ReplicaRouter
    mesh: MeshClient
    metrics: GatewayMetrics
    generation: GenerationServing
    pooling: PoolingServing
    kserve: KServeServing
    extras: VllmExtrasServing  # /tokenize, /detokenize, /score, /classify
    admission: Admission
    budgets: Budgets
    #: Set on SIGTERM: readiness answers 503 while requests in flight finish.
    draining: bool = False

    def call(self, request: Request) -> CallContext:
        request_id = request.scope.get("state", {}).get("request_id") or new_request_id()
        budget = request_budget(request.headers.get(TIMEOUT_HEADER), self.settings)
        return CallContext(
            request_id=request_id,
            deadline=time.monotonic() + budget,
            session=request.headers.get(self.settings.session_header) or None,
            quota=request.scope.get("state", {}).get("quota"),
        )

    def check_visible(self, request: Request, model: str) -> None:
        """NotFound, exactly as for a model the mesh does not serve, when the request's
        tenant may not use `model`."""
        quota = request.scope.get("state", {}).get("quota")
        if quota is not None and not quota.tenant.allows(model):
            raise self.routes.unknown(model, quota.tenant.allows)


def request_budget(header: str | None, settings: GatewaySettings) -> float:
    """A request's deadline budget, seconds: `X-Request-Timeout` when given (capped by
    `--max_request_timeout`), else `--request_timeout`. Every gRPC hop gets what is left."""
    if header is None:
        return settings.request_timeout
    try:
        asked = float(header)
    except ValueError:
        asked = float("nan")
    if not math.isfinite(asked) or asked <= 0:
        raise InvalidArgument(
            f"{TIMEOUT_HEADER} must be a positive number of seconds, not {header[:40]!r}"
        )
    return min(asked, settings.max_request_timeout)


def build_state(
    settings: GatewaySettings, routes: ReplicaRouter, metrics: GatewayMetrics
) -> GatewayState:
    mesh = MeshClient(routes, settings)
    generation = GenerationServing(mesh, metrics)
    admission = Admission(settings, routes)
    metrics.registry.register(admission)
    budgets = Budgets(settings, TenantMetrics(metrics.registry))
    return GatewayState(
        settings=settings,
        routes=routes,
        mesh=mesh,
        metrics=metrics,
        generation=generation,
        pooling=PoolingServing(mesh, owned_by=settings.served_by, created=int(time.time())),
        kserve=KServeServing(mesh, generation),
        extras=VllmExtrasServing(mesh),
        admission=admission,
        budgets=budgets,
    )


def gateway(request: Request) -> GatewayState:
    return request.app.state.gateway
