"""Certificates for TLS tests, made by the script users run (`scripts/make_dev_certs.sh`), and
checks of who a gRPC port lets in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TlsConfig, sync_channel
from services.launcher.processes import ROOT, tls_from_dir

SCRIPT = ROOT / "scripts" / "make_dev_certs.sh"


def make_certs(folder: Path) -> TlsConfig:
    """A new CA and mesh certificate in `folder` (the CA is reused when already there)."""
    subprocess.run([str(SCRIPT), str(folder)], check=True, capture_output=True, timeout=60)
    return tls_from_dir(folder)


def health_answer(address: str, tls: TlsConfig | None, timeout: float = 5.0) -> str:
    """`SERVING`/`NOT_SERVING` when `address` lets this client in, else the refusal's code."""
    try:
        with sync_channel(address, tls) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
            reply = check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def strangers(mesh: TlsConfig, other: TlsConfig) -> dict[str, TlsConfig | None]:
    """Clients a mutual-TLS port must refuse: plain, TLS without a certificate, and TLS with
    a certificate of another CA (each trusting the port's CA, so only its own side fails)."""
    return {
        "plain": None,
        "no certificate": TlsConfig(ca=mesh.ca),
        "another CA": TlsConfig(other.cert, other.key, mesh.ca),
    }
