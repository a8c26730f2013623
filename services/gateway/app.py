"""The gateway app factory: `build_app(settings)`.

The lifespan opens one gRPC channel per mesh service (with its health watch)
and closes them on shutdown; everything long-lived sits on `app.state.gateway`.
With `--control_plane` it also subscribes to the control plane (`Discovery`) and
hands every change to the router, so replicas come and go without a restart; a
control plane unreachable at start fails the start, one that goes away later
leaves the last known replicas in place. The model list file is watched for
changed traffic weights (canary revisions) and routing policies, the tenants
file for changed tenants (keys, models, budgets).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common import tracing
from services.common.model_list import MeshPlan, load_model_list
from services.common.version import VERSION
from services.gateway.discovery import Discovery, subscriptions
from services.gateway.encoder_lane import EncoderLane
from services.gateway.errors import install_error_handlers
from services.gateway.kserve.router import build_v1_router, build_v2_router
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import (
    AccessMiddleware,
    RequestGuardMiddleware,
    RequestIdMiddleware,
    TenantMiddleware,
)
from services.gateway.openai.router import build_router as build_openai_router
from services.gateway.openai.router_vllm import build_vllm_router
from services.gateway.revisions import watch_model_list
from services.gateway.routing import ReplicaRouter
from services.gateway.settings import GatewaySettings
from services.gateway.state import build_state
from services.gateway.tenants import TenantDirectory
from services.gateway.tracing import TracingMiddleware

logger = logging.getLogger(__name__)


def build_app(settings: GatewaySettings, plan: MeshPlan | None = None) -> FastAPI:
    if plan is None and settings.model_list:
        plan = load_model_list(settings.model_list)
    routes = ReplicaRouter(plan, settings.routing_options, tls=settings.tls)
    metrics = GatewayMetrics(routes)
    state = build_state(settings, routes, metrics)
    tenants = TenantDirectory(settings.tenants_file, settings.api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await routes.start()
        names = ", ".join(routes.by_name) or "none"
        logger.info("routing %d model(s): %s", len(routes.by_name), names)
        discovery = None
        watchers: list[asyncio.Future] = []
        if tenants.path is not None and settings.tenants_reload > 0:
            watchers.append(asyncio.ensure_future(tenants.watch(settings.tenants_reload)))
        if settings.model_list and settings.model_list_reload > 0:
            watchers.append(
                asyncio.ensure_future(
                    watch_model_list(
                        settings.model_list, settings.model_list_reload, routes.apply_model_list
                    )
                )
            )
        try:
            if settings.control_plane:
                discovery = Discovery(
                    settings.control_plane,
                    subscriptions(routes.plan),
                    on_change=routes.apply_endpoints,
                    tls=settings.tls,
                )
                await discovery.start()
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            if discovery is not None:
                await discovery.close()
            await state.budgets.close()
            await routes.close()

    app = FastAPI(
        title="hfmesh gateway", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.gateway = state
    prefix = settings.openai_prefix_path
    install_error_handlers(app, openai_prefix=prefix, retry_after=settings.retry_after)
    # With an empty prefix OpenAI's GET /v1/models answers before KServe V1's list.
    app.include_router(build_openai_router(prefix))
    app.include_router(build_vllm_router(prefix))
    app.include_router(build_v1_router())
    app.include_router(build_v2_router())
    # Added innermost first: the request id wraps everything; the key is checked before a
    # body is read; the encoder routes skip FastAPI's routing once the body passed its limits.
    app.add_middleware(EncoderLane, openai_prefix=prefix, retry_after=settings.retry_after)
    app.add_middleware(
        RequestGuardMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_json_depth=settings.max_json_depth,
        openai_prefix=prefix,
    )
    if settings.api_key or settings.tenants_file:
        app.add_middleware(
            TenantMiddleware, tenants=tenants, budgets=state.budgets, openai_prefix=prefix
        )
    app.add_middleware(AccessMiddleware, metrics=metrics, openai_prefix=prefix)
    if tracing.enabled():
        app.add_middleware(TracingMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
