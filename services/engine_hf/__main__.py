"""`python -m services.engine_hf --model_dir DIR --model_name NAME --port N`: the HF engine as an OIP v2 gRPC server."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.logs import configure_logging
from services.common.oip_servicer import InferenceServicer
from services.common.pb.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from services.common.server import GrpcServiceRunner, serve
from services.common.settings import parse_settings
from services.engine_hf.core import HFEngine
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger("services.engine_hf")


WATCHDOG_SECONDS = 1.0


class EngineDied(RuntimeError):
    pass


async def _watch(engine: HFEngine, runner: GrpcServiceRunner, died: list[bool]) -> None:
    """A dead generation loop cannot recover: stop serving so the process exits non-zero."""
    while True:
        await asyncio.sleep(WATCHDOG_SECONDS)
        if not engine.healthy():
            logger.error("the engine is no longer healthy; shutting down")
            died.append(True)
            runner.request_stop()
            return


async def run(settings: HFEngineSettings) -> None:
    engine = HFEngine(settings)
    servicer = InferenceServicer(engine, server_name="hfmesh-engine-hf")
    runner = GrpcServiceRunner(host=settings.host, port=settings.port)
    runner.add(lambda server: add_GRPCInferenceServiceServicer_to_server(servicer, server))
    if settings.metrics_port:
        engine.metrics.serve(settings.metrics_port)
        logger.info("metrics on :%d/metrics", settings.metrics_port)
    died: list[bool] = []
    watchdog = asyncio.ensure_future(_watch(engine, runner, died))
    try:
        await serve(runner, load=engine.load, shutdown=engine.shutdown)
    finally:
        watchdog.cancel()
    if died:
        raise EngineDied("the generation loop died")


def main(argv: list[str] | None = None) -> int:
    settings, _ = parse_settings(
        HFEngineSettings,
        argv,
        prog="python -m services.engine_hf",
        description="transformers engine: every task of a Hugging Face model over OIP v2 gRPC",
    )
    configure_logging(settings.log_level, service="engine_hf")
    try:
        asyncio.run(run(settings))
    except Exception:  # noqa: BLE001 - a failed load is fatal; say why and exit non-zero
        logger.exception("engine failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
