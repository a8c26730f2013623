"""Service processes: free ports, readiness polling, whole-tree kills.

Used by the launcher, the tests and the benches alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.healthcheck import grpc_serving, http_ok

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    port: int
    process: subprocess.Popen
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (engines spawn workers)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass


def start_service(
    module: str,
    args: list[str],
    *,
    name: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready: str = "grpc",
    ready_timeout: float = 300.0,
    log_dir: Path | None = None,
) -> ServiceProcess:
    """Start `python -m module args --port N` and wait until it is ready.

    `ready` is "grpc" (health SERVING), "http" (GET /v2/health/ready is 200) or
    "none". Raises with the service's log when it exits or times out.
    """
    port = port or free_port()
    name = name or module.rsplit(".", 1)[-1]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
    else:
        log = Path(tempfile.mkstemp(prefix=f"hfmesh-{name}-", suffix=".log")[1])
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", module, *args, "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = ServiceProcess(name, command, port, process, log)
    if ready == "none":
        return service
    wait_ready(service, ready, ready_timeout)
    return service


def is_ready(service: ServiceProcess, kind: str = "grpc", path: str = "/v2/health/ready") -> bool:
    """gRPC health SERVING ("grpc") or GET `path` answering 200 ("http")."""
    if kind == "grpc":
        return grpc_serving(service.address)
    return http_ok(f"{service.url}{path}")


def wait_ready(
    service: ServiceProcess,
    kind: str = "grpc",
    timeout: float = 300.0,
    path: str = "/v2/health/ready",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{service.log()[-4000:]}"
            )
        if is_ready(service, kind, path):
            return
        time.sleep(0.25)
    service.stop()
    raise TimeoutError(f"{service.name} not ready after {timeout:.0f}s:\n{service.log()[-4000:]}")
