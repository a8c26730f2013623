"""Loading a model the KServe way: source, task inference, dtype, tokenizer.

Blocking (torch, disk, maybe the hub): callers run `load_model` in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from services.common.architecture import infer_task
from services.common.engine import Task
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger(__name__)

_AUTO_CLASSES = {
    Task.TEXT_GENERATION: "AutoModelForCausalLM",
    Task.TEXT2TEXT_GENERATION: "AutoModelForSeq2SeqLM",
    Task.FILL_MASK: "AutoModelForMaskedLM",
    Task.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    Task.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.RERANK: "AutoModelForSequenceClassification",
    Task.TEXT_EMBEDDING: "AutoModel",
}


class ModelLoadError(RuntimeError):
    """The model cannot be served as configured; the message says why."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    task: Task
    dtype: Any
    device: Any
    max_model_len: int
    architecture: str


def torch_dtype(name: str, device: Any, config_dtype: Any = None) -> Any:
    """`auto` is float32 on CPU (as KServe); on GPU the config's half dtype, else float16."""
    import torch

    aliases = {"float": "float32", "half": "float16"}
    name = aliases.get(name, name)
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return torch.float16


def _source(settings: HFEngineSettings) -> tuple[str, dict[str, Any]]:
    if settings.model_dir:
        return settings.model_dir, {"local_files_only": True}
    return settings.model_id or "", {"revision": settings.model_revision}


def _context_limit(config: Any, tokenizer: Any) -> int:
    candidates = []
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            candidates.append(value)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 10**9:
        candidates.append(tok_limit)
    return min(candidates) if candidates else 512


def load_model(settings: HFEngineSettings) -> LoadedModel:
    import torch
    import transformers

    source, where = _source(settings)
    common = {"trust_remote_code": settings.trust_remote_code, **where}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
    except OSError as error:
        hint = " (no model hub is reachable; use --model_dir)" if settings.model_id else ""
        raise ModelLoadError(f"cannot load the config of {source!r}: {error}{hint}") from error
    architecture = (config.architectures or ["?"])[0]
    task = infer_task(config.architectures, settings.task)
    if task is Task.RERANK and getattr(config, "num_labels", None) != 1:
        raise ModelLoadError(
            f"rerank needs a single-label cross-encoder (num_labels=1); {architecture} has "
            f"{config.num_labels}"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(settings.dtype, device, getattr(config, "dtype", None))
    tok_kwargs = dict(common)
    if settings.model_id and settings.tokenizer_revision:
        tok_kwargs["revision"] = settings.tokenizer_revision
    if settings.disable_lower_case:
        tok_kwargs["do_lower_case"] = False
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **tok_kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    auto_class = getattr(transformers, _AUTO_CLASSES[task])
    model = auto_class.from_pretrained(source, config=config, dtype=dtype, **common)
    model.to(device).eval()
    limit = _context_limit(config, tokenizer)
    if settings.max_model_len is not None:
        if settings.max_model_len > limit:
            raise ModelLoadError(
                f"--max_model_len {settings.max_model_len} exceeds the model's limit {limit}"
            )
        limit = settings.max_model_len
    logger.info(
        "loaded %s (%s) as %s, %s on %s, context %d",
        source,
        architecture,
        task.value,
        dtype,
        device,
        limit,
    )
    return LoadedModel(model, tokenizer, task, dtype, device, limit, architecture)
