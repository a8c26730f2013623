"""`python -m services.gateway --model_list mesh.yaml --port 8080`."""

from __future__ import annotations

import math
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.common import tracing
from services.common.errors import HfmeshError
from services.common.logs import configure_logging
from services.gateway.app import build_app
from services.gateway.settings import load_settings


def main(argv: list[str] | None = None) -> None:
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
    grace)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.gateway_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway_app.state.gateway.draining = True
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main(sys.argv[1:])
