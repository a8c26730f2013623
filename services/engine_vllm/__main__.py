"""`python -m services.engine_vllm --model_dir <folder> --model_name <name> --port N [vLLM engine args]`.

Health is NOT_SERVING while vLLM loads. Prometheus `/metrics` (vLLM's `vllm:`
series) is served on `--metrics_port` when given. If the vLLM engine dies the
server drains and the process exits with status 1, so an orchestrator restarts
it. vLLM spawns worker processes that re-import this module: everything runs
under the `__main__` guard.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.logs import configure_logging
from services.common.oip_servicer import InferenceServicer
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import GrpcServiceRunner, serve
from services.engine_vllm.core import VLLMEngine
from services.engine_vllm.settings import build_config

logger = logging.getLogger("services.engine_vllm")

SERVER_NAME = "hfmesh-engine-vllm"
HEALTH_POLL_SECONDS = 0.5


async def watch_engine(engine: VLLMEngine, runner: GrpcServiceRunner) -> bool:
    """Turn a dead vLLM engine into NOT_SERVING and a stop; True when it died on its own.

    A SIGTERM to the whole process group also stops vLLM's engine core; that is
    a requested shutdown, not a death.
    """
    stop_requested = asyncio.ensure_future(runner.wait_for_stop_signal())
    try:
        while engine.healthy():
            await asyncio.sleep(HEALTH_POLL_SECONDS)
        await asyncio.sleep(0)
        if engine.stopping or stop_requested.done():
            return False
    finally:
        stop_requested.cancel()
    logger.error("the vLLM engine died: health NOT_SERVING, shutting down")
    await runner.set_serving(False)
    runner.request_stop()
    return True


async def run(engine: VLLMEngine, host: str, port: int) -> bool:
    """Serve until SIGTERM or engine death; True when the engine died."""
    runner = GrpcServiceRunner(host=host, port=port)
    servicer = InferenceServicer(engine, server_name=SERVER_NAME)
    runner.add(lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))
    watcher: asyncio.Future | None = None

    async def load() -> None:
        nonlocal watcher
        await engine.start()
        watcher = asyncio.ensure_future(watch_engine(engine, runner))

    try:
        await serve(runner, load=load, shutdown=engine.shutdown)
    finally:
        died = watcher is not None and watcher.done() and not watcher.cancelled() and watcher.result()
        if watcher is not None:
            watcher.cancel()
    return died


def main(argv: list[str] | None = None) -> int:
    config = build_config(argv)
    settings = config.settings
    configure_logging(settings.log_level, service="engine_vllm")
    engine = VLLMEngine(config)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
        logger.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    if asyncio.run(run(engine, settings.host, settings.port)):
        logger.error("exiting with status 1: the vLLM engine died")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
