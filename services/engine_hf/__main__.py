"""`python -m services.engine_hf --model_dir DIR --model_name NAME --port N`.

The HF engine as an OIP v2 gRPC server (`services.common.server.serve_engine`).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common import tracing
from services.common.logs import configure_logging
from services.common.oip_servicer import InferenceServicer
from services.common.pb.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from services.common.server import GrpcServiceRunner, serve_engine
from services.common.settings import parse_settings
from services.engine_hf.core import HFEngine
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger("services.engine_hf")

SERVER_NAME = "hfmesh-engine-hf"


async def run(settings: HFEngineSettings) -> int:
    """Serve until SIGTERM (0), or exit 1 when the model fails to load or the engine dies."""
    engine = HFEngine(settings)
    servicer = InferenceServicer(
        engine, server_name=SERVER_NAME, max_pending=settings.max_pending_requests
    )
    runner = GrpcServiceRunner(
        host=settings.host,
        port=settings.port,
        grace_seconds=settings.drain_grace,
        max_message_bytes=settings.max_message_bytes,
        tls=settings.tls,
    )
    runner.add(lambda server: add_GRPCInferenceServiceServicer_to_server(servicer, server))
    if settings.metrics_port:
        engine.metrics.serve(settings.metrics_port)
        logger.info("metrics on :%d/metrics", settings.metrics_port)
    registration = settings.registration(
        service="engine", models=[settings.model_name], backend="huggingface"
    )
    return await serve_engine(engine, runner, registration=registration)


def main(argv: list[str] | None = None) -> int:
    settings, _ = parse_settings(
        HFEngineSettings,
        argv,
        prog="python -m services.engine_hf",
        description="transformers engine: every task of a Hugging Face model over OIP v2 gRPC",
    )
    configure_logging(settings.log_level, service="engine_hf")
    tracing.configure("engine-hf")
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
