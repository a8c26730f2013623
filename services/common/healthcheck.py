"""`python -m services.common.healthcheck grpc|http PORT`: one readiness probe, as an exit status.

Container `HEALTHCHECK`s and compose `healthcheck:` blocks call this instead of `curl`: a gRPC
port answers `grpc.health.v1.Health/Check` (SERVING → exit 0), the gateway's HTTP port answers
`GET /v2/health/ready` (200 → exit 0); anything else, a refused connection or a timeout, exits 1.
It imports only grpcio and the standard library, so it runs in every image, torch-free ones
included, and starts in well under a second. In a TLS mesh the gRPC check presents the
service's own certificate: `--tls_cert/--tls_key/--tls_ca/--tls_server_name` default to the
`HFMESH_TLS_*` variables the service itself reads (docs/tls.md), so a container's probe
needs no flags of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TlsConfig, sync_channel


def grpc_serving(
    address: str, timeout: float = 1.0, *, service: str = "", tls: TlsConfig | None = None
) -> bool:
    """Whether `address` answers grpc.health.v1 Check(service) with SERVING (over TLS with
    `tls`)."""
    try:
        with sync_channel(address, tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=service)
            # types-grpcio-health-checking declares HealthStub without its methods.
            check = stub.Check  # type: ignore[attr-defined]
            reply = check(request, timeout=timeout)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 when the service on PORT is ready, 1 otherwise.",
    )
    parser.add_argument("kind", choices=("grpc", "http"), help="grpc.health.v1 or HTTP GET")
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service", default="", help="gRPC health service name ('' = server)")
    parser.add_argument("--path", default="/v2/health/ready", help="HTTP path to GET")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    for name, what in (
        ("cert", "client certificate (PEM)"),
        ("key", "its key"),
        ("ca", "CA the server is verified against"),
        ("server_name", "name checked in the server's certificate"),
    ):
        env = f"HFMESH_TLS_{name.upper()}"
        parser.add_argument(
            f"--tls_{name}", default=os.environ.get(env) or None, help=f"gRPC: {what} [env {env}]"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    address = f"{args.host}:{args.port}"
    if args.kind == "grpc":
        try:
            tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name)
        except ValueError as error:
            parser.error(str(error))
        ready = grpc_serving(address, args.timeout, service=args.service, tls=tls)
    else:
        ready = http_ok(f"http://{address}{args.path}", args.timeout)
    if not ready:
        print(f"{args.kind} {address}: not ready", file=sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
