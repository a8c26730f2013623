"""The control plane assembled: store, sources, health checker, ADS and Registration on one port.

`ControlPlane(settings).start()` binds (port 0 picks one) and returns the port; `stop()` ends
the background sources and the server. The gRPC server is a plain one: `grpc.aio.server`
cannot itself be xDS-managed, and the control plane is what the others discover through. With
`--tls_*` its port, its health checks of the endpoints and the bootstrap it writes speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
from google.protobuf import descriptor

from services.common.pb import pool, registration_pb2, registration_pb2_grpc
from services.common.server import GrpcServiceRunner
from services.common.service_metrics import MetricsInterceptor, ServiceMetrics
from services.control_plane import kubernetes as k8s
from services.control_plane.ads import AdsServicer
from services.control_plane.bootstrap import write_bootstrap
from services.control_plane.health import HealthChecker
from services.control_plane.model_list import SOURCE as STATIC
from services.control_plane.model_list import StaticMesh, read_model_list
from services.control_plane.registration import RegistrationServicer
from services.control_plane.settings import ControlPlaneSettings
from services.control_plane.snapshot import SnapshotCache
from services.control_plane.store import EndpointStore

logger = logging.getLogger(__name__)

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
REGISTRATION_SERVICE = registration_pb2.DESCRIPTOR.services_by_name["Registration"].full_name


def _add_to_reflection_pool(file: descriptor.FileDescriptor) -> None:
    """Reflection answers from hfmesh's pool; the xDS files live in protobuf's default one."""
    try:
        pool.POOL.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for dependency in file.dependencies:
        _add_to_reflection_pool(dependency)
    pool.POOL.AddSerializedFile(file.serialized_pb)


class ControlPlane:
    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        static = read_model_list(settings.model_list) if settings.model_list else StaticMesh()
        # In Kubernetes the list's endpoints are Services over the pods the cluster publishes.
        fallback = (STATIC,) if settings.kubernetes else ()
        self.store = EndpointStore(static.models, fallback_sources=fallback)
        self.store.replace(STATIC, static.publications)
        self.cache = SnapshotCache(self.store)
        self.ads = AdsServicer(self.cache)
        self.registration = RegistrationServicer(self.store, settings.lease_ttl)
        self.health: HealthChecker | None = None
        if settings.health_interval > 0:
            self.health = HealthChecker(
                self.store,
                interval=settings.health_interval,
                timeout=settings.health_timeout,
                failures=settings.health_failures,
                tls=settings.tls,
            )
        self.kubernetes: k8s.EndpointSliceSource | None = None
        if settings.kubernetes:
            self.kubernetes = k8s.EndpointSliceSource(
                self.store,
                k8s.api_client(settings.kubernetes_host),
                namespace=settings.kubernetes_namespace,
            )
        _add_to_reflection_pool(ads_pb2.DESCRIPTOR)
        self.metrics = ServiceMetrics("control_plane")
        self.runner = GrpcServiceRunner(
            host=settings.host,
            port=settings.port,
            grace_seconds=settings.grace_seconds,
            extra_service_names=[ADS_SERVICE, REGISTRATION_SERVICE],
            interceptors=[MetricsInterceptor(self.metrics)],
            tls=settings.tls,
        )
        self.runner.add(
            lambda s: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, s)
        )
        self.runner.add(
            lambda s: registration_pb2_grpc.add_RegistrationServicer_to_server(self.registration, s)
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        port = await self.runner.start()
        await self.start_sources()
        await self.runner.set_serving(True)
        return port

    async def start_sources(self) -> None:
        """Health checks and Kubernetes; a bootstrap file for clients when asked for one."""
        if self.health is not None:
            self._tasks.append(asyncio.ensure_future(self.health.run()))
        if self.kubernetes is not None:
            self._tasks.append(asyncio.ensure_future(self.kubernetes.run()))
        if self.settings.bootstrap_file:
            host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
            path = write_bootstrap(
                self.settings.bootstrap_file,
                f"{host}:{self.runner.bound_port}",
                self.settings.bootstrap_node_id,
                tls=self.settings.tls,
            )
            logger.info("xDS bootstrap written to %s", path)

    async def stop_sources(self) -> None:
        if self.kubernetes is not None:
            self.kubernetes.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.registration.close()

    async def stop(self, grace: float | None = None) -> None:
        await self.stop_sources()
        await self.runner.server.stop(grace)
