"""`python -m services.engine_hf --model_dir DIR --model_name NAME --port N`, or
`python -m services.engine_hf --model_list mesh.yaml --models A,B --port N`.

The HF engine as an OIP v2 gRPC server (`services.common.server.serve_engine`): a
`ModelRepository` of one model, or of the several a model list names (an engine group). The
settings are read before torch is imported: OpenMP reads its wait policy when torch loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from services.common import tracing
from services.common.logs import configure_logging
from services.common.oip_servicer import InferenceServicer
from services.common.pb.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from services.common.server import GrpcServiceRunner, serve_engine
from services.common.settings import parse_settings
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger("services.engine_hf")

SERVER_NAME = "hfmesh-engine-hf"


async def run(settings: HFEngineSettings, models: list[HFEngineSettings]) -> int:
    """Serve `models` until SIGTERM (0), or exit 1 when a model fails to load or the engine
    dies."""
    from services.engine_hf.repository import ModelRepository  # torch: after the wait policy

    engine = ModelRepository(models)
    servicer = InferenceServicer(
        engine, server_name=SERVER_NAME, max_pending=settings.max_pending_requests
    )
    runner = GrpcServiceRunner(
        host=settings.host,
        port=settings.port,
        grace_seconds=settings.drain_grace,
        max_message_bytes=settings.max_message_bytes,
        tls=settings.tls,
        settle_heap=True,
    )
    runner.add(lambda server: add_GRPCInferenceServiceServicer_to_server(servicer, server))
    if settings.metrics_port:
        engine.metrics.serve(settings.metrics_port)
        logger.info("metrics on :%d/metrics", settings.metrics_port)
    registration = settings.registration(
        service="engine", models=engine.names, backend="huggingface"
    )
    return await serve_engine(engine, runner, registration=registration)


def set_wait_policy(settings: HFEngineSettings) -> None:
    """`OMP_WAIT_POLICY` from `--omp_wait_policy` unless the environment has one; before torch
    loads. On busy shared cores, spinning OpenMP threads take the CPU the rest of the mesh
    needs (and their own other thread's): docs/performance.md."""
    if settings.omp_wait_policy != "default":
        os.environ.setdefault("OMP_WAIT_POLICY", settings.omp_wait_policy.upper())


def main(argv: list[str] | None = None) -> int:
    settings, _ = parse_settings(
        HFEngineSettings,
        argv,
        prog="python -m services.engine_hf",
        description="transformers engine: every task of a Hugging Face model over OIP v2 gRPC",
    )
    set_wait_policy(settings)
    configure_logging(settings.log_level, service="engine_hf")
    from services.engine_hf.repository import model_settings  # torch: after the wait policy

    try:
        models = model_settings(settings)
    except ValueError as error:
        print(f"python -m services.engine_hf: error: {error}", file=sys.stderr)
        return 2
    tracing.configure("engine-hf")
    return asyncio.run(run(settings, models))


if __name__ == "__main__":
    sys.exit(main())
