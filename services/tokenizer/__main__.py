"""`python -m services.tokenizer --model_dir DIR --model_name NAME --port N`
(or `--model_list mesh.yaml`)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from services.common import tracing
from services.common.architecture import infer_task
from services.common.errors import HfmeshError
from services.common.logs import configure_logging
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.registration import RegistrationError
from services.common.server import GrpcServiceRunner, serve
from services.common.settings import parse_settings
from services.tokenizer.core import ModelOptions, TokenizerCore, TokenizerModel
from services.tokenizer.loader import load_tokenizer, read_model_config
from services.tokenizer.predictor import PredictorClient
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import ModelSpec, TokenizerSettings, model_specs

logger = logging.getLogger("services.tokenizer")


def build_model(spec: ModelSpec, settings: TokenizerSettings) -> TokenizerModel:
    config = read_model_config(Path(spec.folder).expanduser())
    task = infer_task(config.architectures, spec.task)
    options = ModelOptions(
        task=task,
        max_model_len=spec.max_model_len,
        lower_case=False if settings.disable_lower_case else None,
        add_special_tokens=not settings.disable_special_tokens,
        return_token_type_ids=settings.return_token_type_ids,
        tensor_input_names=tuple(
            n.strip() for n in (settings.tensor_input_names or "").split(",") if n.strip()
        ),
        return_probabilities=settings.return_probabilities,
        return_raw_logits=settings.return_raw_logits,
    )
    tokenizer = load_tokenizer(spec.folder, lower_case=options.lower_case)
    model = TokenizerModel(
        spec.name,
        tokenizer,
        options,
        config_max_len=config.max_position_embeddings,
        labels=config.id2label,
    )
    logger.info(
        "loaded tokenizer for %s (%s, max_model_len=%s) from %s",
        spec.name,
        task.value,
        model.max_model_len,
        spec.folder,
    )
    return model


async def main(argv: list[str] | None = None) -> None:
    settings, _ = parse_settings(
        TokenizerSettings,
        argv,
        prog="python -m services.tokenizer",
        description="hfmesh tokenizer service: chat templates, tokenization, pre/post-processing "
        "(OIP v2 gRPC)",
    )
    configure_logging(settings.log_level, service="tokenizer")
    tracing.configure("tokenizer")
    try:
        specs = model_specs(settings)
    except HfmeshError as error:
        raise SystemExit(f"python -m services.tokenizer: {error.message}") from None
    predictor = (
        PredictorClient(
            settings.predictor_host,
            timeout=settings.predictor_timeout,
            max_message_bytes=settings.max_message_bytes,
            tls=settings.tls,
        )
        if settings.predictor_host
        else None
    )
    servicer = TokenizerServicer(predictor=predictor)
    if settings.metrics_port:
        servicer.metrics.serve(settings.metrics_port, settings.host)
        logger.info("metrics on :%d/metrics", settings.metrics_port)
    runner = GrpcServiceRunner(
        host=settings.host,
        port=settings.port,
        grace_seconds=settings.drain_grace,
        max_message_bytes=settings.max_message_bytes,
        tls=settings.tls,
        settle_heap=True,
    )
    runner.add(lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))
    core: list[TokenizerCore] = []

    async def load() -> None:
        models = [await asyncio.to_thread(build_model, spec, settings) for spec in specs]
        core.append(TokenizerCore(models, workers=settings.workers))
        servicer.attach(core[0])

    async def shutdown() -> None:
        if predictor is not None:
            await predictor.close()
        for item in core:
            item.close()

    registration = settings.registration(service="tokenizer", models=[spec.name for spec in specs])
    try:
        await serve(runner, load=load, shutdown=shutdown, registration=registration)
    except RegistrationError as error:
        raise SystemExit(f"python -m services.tokenizer: {error}") from None


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
