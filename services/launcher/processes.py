"""Service processes: free ports, readiness polling, whole-tree kills.

Used by the launcher, the tests and the benches alike. A process started with a `tls`
configuration gets it as its `HFMESH_TLS_*` settings, and its readiness is polled over TLS
with the same certificate.
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
from services.common.tls import TlsConfig

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
    tls: TlsConfig | None = None  # its gRPC port's TLS (readiness is polled with it)

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


#: The files of a TLS folder (`--tls_dir`), as `scripts/make_dev_certs.sh` names them.
TLS_CERT, TLS_KEY, TLS_CA = "mesh.pem", "mesh-key.pem", "ca.pem"


def tls_from_dir(folder: str | Path) -> TlsConfig:
    """Mutual TLS with the certificate, key and CA of `folder`; `FileNotFoundError` naming
    what is missing (and how to make it)."""
    base = Path(folder).expanduser().resolve()
    missing = [name for name in (TLS_CERT, TLS_KEY, TLS_CA) if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--tls_dir {base}: no {', '.join(missing)} (make a development set with "
            f"scripts/make_dev_certs.sh {base})"
        )
    return TlsConfig(str(base / TLS_CERT), str(base / TLS_KEY), str(base / TLS_CA))


def tls_env(tls: TlsConfig | None) -> dict[str, str]:
    """The `HFMESH_TLS_*` settings that give a service `tls` (none for plain gRPC)."""
    if tls is None:
        return {}
    values = {"CERT": tls.cert, "KEY": tls.key, "CA": tls.ca, "SERVER_NAME": tls.server_name}
    return {f"HFMESH_TLS_{name}": str(value) for name, value in values.items() if value}


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
    tls: TlsConfig | None = None,
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
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
        **tls_env(tls),
    }
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
    service = ServiceProcess(name, command, port, process, log, tls=tls)
    if ready == "none":
        return service
    wait_ready(service, ready, ready_timeout)
    return service


def is_ready(service: ServiceProcess, kind: str = "grpc", path: str = "/v2/health/ready") -> bool:
    """gRPC health SERVING ("grpc") or GET `path` answering 200 ("http")."""
    if kind == "grpc":
        return grpc_serving(service.address, tls=service.tls)
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
