"""`python -m services.engine_vllm --model_dir DIR --model_name NAME --port N [vLLM engine args]`.

Health is NOT_SERVING while vLLM loads. Prometheus `/metrics` (vLLM's `vllm:`
series) is served on `--metrics_port` when given. If the vLLM engine dies the
server drains and the process exits with status 1, so an orchestrator restarts
it (`services.common.server.serve_engine`). With `--control_plane` it registers its
served model name (the base model: LoRA adapters are requested by name through it and are
not published as services of their own). vLLM spawns worker processes that re-import this
module: everything runs under the `__main__` guard.
"""

from __future__ import annotations

import asyncio
import logging

from services.common import tracing
from services.common.logs import configure_logging
from services.common.oip_servicer import InferenceServicer
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import GrpcServiceRunner, serve_engine
from services.engine_vllm.core import VLLMEngine
from services.engine_vllm.settings import VLLMEngineSettings, build_config

logger = logging.getLogger("services.engine_vllm")

SERVER_NAME = "hfmesh-engine-vllm"


async def run(engine: VLLMEngine, settings: VLLMEngineSettings) -> int:
    """Serve until SIGTERM (0), or exit 1 when the model fails to load or the engine dies."""
    runner = GrpcServiceRunner(
        host=settings.host,
        port=settings.port,
        grace_seconds=settings.drain_grace,
        max_message_bytes=settings.max_message_bytes,
        tls=settings.tls,
        settle_heap=True,
    )
    servicer = InferenceServicer(
        engine, server_name=SERVER_NAME, max_pending=settings.max_pending_requests
    )
    runner.add(lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))
    registration = settings.registration(
        service="engine", models=[settings.model_name], backend="vllm"
    )
    return await serve_engine(engine, runner, registration=registration)


def main(argv: list[str] | None = None) -> int:
    config = build_config(argv)
    settings = config.settings
    configure_logging(settings.log_level, service="engine_vllm")
    tracing.configure("engine-vllm")
    engine = VLLMEngine(config)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
        logger.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    return asyncio.run(run(engine, settings))


if __name__ == "__main__":
    raise SystemExit(main())
