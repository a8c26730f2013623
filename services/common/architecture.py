"""A model's task from its architecture, by KServe's Hugging Face runtime rules.

Every service that needs a task it was not told (the launcher's planner, both
engines, the tokenizer) asks `infer_task`; reading `config.json` is the only
disk access here, and nothing imports torch or an engine library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from services.common.engine import Task
from services.common.errors import InvalidArgument

# Architecture suffix → task, in the order KServe's Hugging Face runtime checks them.
_SUFFIX_TASKS = (
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
    ("ForSeq2SeqLM", Task.TEXT2TEXT_GENERATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
)


def task_from_architecture(architecture: str) -> Task:
    """KServe's inference: by suffix; a bare encoder (`BertModel`) embeds.

    Rerank is never inferred (a cross-encoder is a sequence classifier): it is asked for.
    """
    for suffix, task in _SUFFIX_TASKS:
        if architecture.endswith(suffix):
            return task
    if architecture.endswith("Model"):
        return Task.TEXT_EMBEDDING
    raise InvalidArgument(f"cannot infer a task for architecture '{architecture}'; pass --task")


def read_architecture(folder: str | Path) -> str:
    """The first architecture a model folder's `config.json` names."""
    config = Path(folder) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"cannot read {config}: {error}") from None
    if not architectures:
        raise InvalidArgument(f"{config} names no architecture; pass --task")
    return architectures[0]


def infer_task(model: str | Path | Sequence[str] | None, requested: Task | None = None) -> Task:
    """`requested` when given (nothing is read); else the task of `model`'s first architecture.

    `model` is a model folder (its `config.json` is read) or the architectures a
    config already loaded names. Raises `InvalidArgument` that asks for `--task`.
    """
    if requested is not None:
        return requested
    if isinstance(model, (str, Path)):
        return task_from_architecture(read_architecture(model))
    if not model:
        raise InvalidArgument("the model config names no architecture; pass --task")
    return task_from_architecture(model[0])
