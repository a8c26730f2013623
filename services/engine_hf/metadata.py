"""The inputs and outputs ModelMetadata reports, per task (-1: any size)."""

from __future__ import annotations

from typing import Any

from services.common.engine import Task, TensorSpec
from services.common.llm_tensors import LLM_INPUTS, LLM_OUTPUTS


def _text_output(task: Task, width: int, probabilities: bool, raw: bool) -> TensorSpec:
    if task is Task.FILL_MASK:
        if raw or probabilities:
            return TensorSpec("output-0", "FP32", (-1, -1, width))
        return TensorSpec("output-0", "BYTES", (-1,))
    if task is Task.SEQUENCE_CLASSIFICATION:
        if raw:
            return TensorSpec("output-0", "FP32", (-1, 1, width))
        return TensorSpec("output-0", "FP32", (-1, width)) if probabilities else TensorSpec("output-0", "INT64", (-1,))
    if task is Task.TOKEN_CLASSIFICATION:
        if raw or probabilities:
            return TensorSpec("output-0", "FP32", (-1, 1, -1, width))
        return TensorSpec("output-0", "INT64", (-1, 1, -1))
    if task is Task.TEXT_EMBEDDING:
        return TensorSpec("output-0", "FP32", (-1, width))
    return TensorSpec("output-0", "FP32", (-1,))


def tensor_specs(task: Task, runner: Any, loaded: Any, settings: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if task.is_generative:
        return list(LLM_INPUTS), list(LLM_OUTPUTS)
    if runner is None or loaded is None:
        return [], []
    config = loaded.model.config
    if task is Task.TEXT_EMBEDDING:
        width = int(config.hidden_size)
    elif task is Task.FILL_MASK:
        width = int(runner.vocab_size)
    else:
        width = int(getattr(config, "num_labels", -1))
    if task is Task.RERANK:
        inputs = [TensorSpec("query", "BYTES", (1,)), TensorSpec("documents", "BYTES", (-1,))]
    else:
        inputs = [TensorSpec("input-0", "BYTES", (-1,))]
    inputs += [TensorSpec(name, "INT64", (-1, -1)) for name in runner.tensor_inputs]
    outputs = [_text_output(task, width, settings.return_probabilities, settings.return_raw_logits)]
    if task is Task.TEXT_EMBEDDING:
        outputs += [TensorSpec("last_hidden_state", "FP32", (-1, -1, width)), TensorSpec("embeddings", "FP32", (-1, width))]
    elif task is Task.TOKEN_CLASSIFICATION or task is Task.FILL_MASK:
        outputs.append(TensorSpec("logits", "FP32", (-1, -1, width)))
    elif task is Task.RERANK:
        outputs += [TensorSpec("logits", "FP32", (-1, 1)), TensorSpec("scores", "FP32", (-1,))]
    else:
        outputs.append(TensorSpec("logits", "FP32", (-1, width)))
    return inputs, outputs
