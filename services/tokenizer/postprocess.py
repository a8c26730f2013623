"""Raw predictor tensors → the task result, with the HF engine's text-in semantics.

The numpy task functions live in `services.common.task_results` (shared with the HF
engine); this module only picks the right predictor output and the right
preprocess tensor for each task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.common import task_results
from services.common.engine import Task
from services.common.errors import InvalidArgument, Unimplemented

# The predictor output each task reads first (DESIGN.md §3 "Encoder tensors").
PREFERRED_OUTPUTS: dict[Task, tuple[str, ...]] = {
    Task.FILL_MASK: ("logits",),
    Task.SEQUENCE_CLASSIFICATION: ("logits",),
    Task.TOKEN_CLASSIFICATION: ("logits",),
    Task.TEXT_EMBEDDING: ("last_hidden_state", "embeddings"),
    Task.RERANK: ("scores", "logits"),
}


def pick_output(task: Task, outputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The named output the task needs, or the only one there is (any Triton model)."""
    for name in PREFERRED_OUTPUTS.get(task, ()):
        if name in outputs:
            return name, outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.items()))
    wanted = " or ".join(PREFERRED_OUTPUTS.get(task, ("?",)))
    raise InvalidArgument(
        f"{task.value} post-processing needs the predictor output {wanted}; got {sorted(outputs) or 'none'}"
    )


def _needs(inputs: dict[str, np.ndarray], name: str, task: Task) -> np.ndarray:
    array = inputs.get(name)
    if array is None:
        raise InvalidArgument(f"{task.value} post-processing needs the preprocess tensor '{name}'")
    return array


def task_output(
    task: Task,
    outputs: dict[str, np.ndarray],
    inputs: dict[str, np.ndarray],
    *,
    tokenizer: Any,
    probabilities: bool = False,
    raw_logits: bool = False,
) -> np.ndarray:
    if task.is_generative:
        raise Unimplemented(f"post-processing is for encoder tasks; task {task.value} generates text")
    name, data = pick_output(task, outputs)
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise InvalidArgument(f"predictor output '{name}' must be numeric, got {data.dtype}")
    if task is Task.SEQUENCE_CLASSIFICATION:
        return task_results.sequence_classification(
            data, return_probabilities=probabilities, return_raw_logits=raw_logits
        )
    if task is Task.TOKEN_CLASSIFICATION:
        return task_results.token_classification(
            data, return_probabilities=probabilities, return_raw_logits=raw_logits
        )
    if task is Task.FILL_MASK:
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise InvalidArgument("this tokenizer has no mask token; fill_mask needs one")
        return task_results.fill_mask(
            data,
            _needs(inputs, "input_ids", task),
            mask_token_id=int(mask_id),
            decode=lambda ids: tokenizer.decode(ids),
            return_probabilities=probabilities,
            return_raw_logits=raw_logits,
        )
    if task is Task.TEXT_EMBEDDING:
        if data.ndim == 2:  # already pooled by the predictor
            return task_results.l2_normalize(data.astype(np.float32))
        return task_results.text_embedding(data, _needs(inputs, "attention_mask", task))
    if task is Task.RERANK:
        return task_results.rerank_scores(data)
    raise Unimplemented(f"no post-processing for task {task.value}")
