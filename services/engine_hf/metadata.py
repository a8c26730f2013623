"""The inputs and outputs ModelMetadata reports, per task (-1: any size).

Encoder specs come from the shared contract (`encoder_tensors.encoder_specs`); this
module only measures the model: classes, vocabulary or hidden size.
"""

from __future__ import annotations

from typing import Any

from services.common.encoder_tensors import ResultOptions, encoder_specs
from services.common.engine import Task, TensorSpec
from services.common.llm_tensors import LLM_INPUTS, LLM_OUTPUTS


def tensor_specs(
    task: Task, runner: Any, loaded: Any, settings: Any
) -> tuple[list[TensorSpec], list[TensorSpec]]:
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
    options = ResultOptions(settings.return_probabilities, settings.return_raw_logits)
    return encoder_specs(task, width=width, tensor_inputs=runner.tensor_inputs, options=options)
