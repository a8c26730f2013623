"""`python -m services.gateway --model_list mesh.yaml --port 8080`.

`python -m services.gateway hash-key` reads an API key from stdin (or, with `--new`, makes a
random one and prints it first) and prints its tenants-file form, `sha256:<hex>`.
"""

from __future__ import annotations

import argparse
import math
import secrets
import signal
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.common import heap, tracing
from services.common.errors import HfmeshError
from services.common.logs import configure_logging
from services.gateway.app import build_app
from services.gateway.settings import load_settings
from services.gateway.tenants import hash_key


def hash_key_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway hash-key",
        description="print the tenants-file form (sha256:<hex>) of an API key read from stdin",
    )
    parser.add_argument(
        "--new", action="store_true", help="make a random key, print it, then its hash"
    )
    args = parser.parse_args(argv)
    if args.new:
        key = "sk-" + secrets.token_urlsafe(32)
        print(key)
    else:
        key = sys.stdin.readline().rstrip("\r\n")
        if not key:
            raise SystemExit("hash-key: no key on stdin")
    print(hash_key(key))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hash-key"]:
        hash_key_command(argv[1:])
        return
    settings = load_settings(argv)
    configure_logging(settings.log_level, service="gateway")
    tracing.configure("gateway")
    try:
        app = build_app(settings)
    except HfmeshError as error:
        raise SystemExit(f"python -m services.gateway: {error.message}") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_grace),
        # grpc.aio is built for the default asyncio loop; under uvloop its calls
        # showed tens of ms of extra tail latency here.
        loop="asyncio",
    )
    # uvicorn re-raises a SIGTERM once it has drained, under the handler it found: this one
    # makes that a clean exit (status 0) rather than death by the signal.
    signal.signal(signal.SIGTERM, _drained)
    DrainingServer(config, app).run()


def _drained(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    """uvicorn, whose SIGTERM also turns the gateway's readiness to 503 at once (uvicorn
    itself stops accepting connections and lets requests in flight finish within the
    grace), and which settles the heap once the app has started (`services.common.heap`)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.gateway_app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        heap.settle()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway_app.state.gateway.draining = True
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main(sys.argv[1:])
