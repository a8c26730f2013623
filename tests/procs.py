"""Real service processes for tests (see services/launcher/processes.py)."""

from services.launcher.processes import (  # noqa: F401
    ROOT,
    ServiceProcess,
    free_port,
    grpc_serving,
    http_ready,
    start_service,
    wait_ready,
)
