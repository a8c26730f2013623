"""The control plane's settings (`python -m services.control_plane --help`)."""

from __future__ import annotations

from pydantic import Field

from services.common.settings import TlsFlags, metrics_port_field, parse_settings


class ControlPlaneSettings(TlsFlags):
    host: str = Field("0.0.0.0", description="gRPC listen address (ADS and Registration)")
    port: int = Field(18000, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    model_list: str | None = Field(
        None, description="planned mesh model list (YAML): known models and static endpoints"
    )
    lease_ttl: float = Field(10.0, gt=0, description="seconds a registration lives unrenewed")
    health_interval: float = Field(
        1.0, ge=0, description="seconds between health checks of each endpoint (0: none)"
    )
    # An endpoint that answers NOT_SERVING is withdrawn at once. A slow answer is not a dead
    # replica: an engine busy compiling kernels on a loaded machine missed 1 s deadlines twice
    # and was withdrawn while serving, so the defaults tolerate a few seconds of silence.
    health_timeout: float = Field(3.0, gt=0, description="deadline of one health check, seconds")
    health_failures: int = Field(
        3, ge=1, description="failed checks (no answer) before an endpoint is withdrawn"
    )
    kubernetes: bool = Field(
        False,
        description="also follow Kubernetes EndpointSlices; the model list's endpoints (Service "
        "names) then stand in for a service only while no pod of it is published",
    )
    kubernetes_namespace: str = Field("default", description="namespace of the EndpointSlices")
    kubernetes_host: str | None = Field(
        None, description="API server URL (default: the in-cluster service account)"
    )
    bootstrap_file: str | None = Field(
        None, description="write an xDS bootstrap for clients here once listening"
    )
    bootstrap_node_id: str = Field("hfmesh", description="node id in the written bootstrap")
    metrics_port: int | None = metrics_port_field()
    grace_seconds: float = Field(5.0, ge=0, description="drain time on SIGTERM, seconds")
    log_level: str = Field("INFO", description="logging level")


def load_settings(argv: list[str] | None = None) -> ControlPlaneSettings:
    settings, _ = parse_settings(
        ControlPlaneSettings,
        argv,
        prog="python -m services.control_plane",
        description="hfmesh xDS control plane: ADS (state of the world) and replica registration",
    )
    return settings
