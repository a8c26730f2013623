"""`python -m services.gateway --model_list mesh.yaml --port 8080`."""

from __future__ import annotations

import sys

import uvicorn

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
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # grpc.aio is built for the default asyncio loop; under uvloop its calls
        # showed tens of ms of extra tail latency here.
        loop="asyncio",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
