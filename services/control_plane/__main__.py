"""`python -m services.control_plane --model_list mesh.yaml --port 18000`."""

from __future__ import annotations

import asyncio
import sys

from services.common import tracing
from services.common.errors import HfmeshError
from services.common.logs import configure_logging
from services.common.server import serve
from services.control_plane.app import ControlPlane
from services.control_plane.settings import load_settings


async def main(argv: list[str] | None = None) -> None:
    settings = load_settings(argv)
    configure_logging(settings.log_level, service="control_plane")
    tracing.configure("control-plane")
    try:
        control_plane = ControlPlane(settings)
    except HfmeshError as error:
        raise SystemExit(f"python -m services.control_plane: {error.message}") from None
    if settings.metrics_port:
        control_plane.metrics.serve(settings.metrics_port, settings.host)
    await serve(
        control_plane.runner,
        load=control_plane.start_sources,
        shutdown=control_plane.stop_sources,
    )


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
