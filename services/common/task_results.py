"""Encoder-task post-processing: raw model outputs → task results, numpy only.

The numbers behind `encoder_tensors.task_result`, which both engines (text in →
result out) and the tokenizer service (the KServe "transformer", which gets the
same raw tensors back from any predictor) call. Results follow the KServe Hugging
Face server per task:

- fill_mask: the decoded token(s) predicted at the mask position(s), one string per input;
- sequence_classification: the class index (INT64 [N]), or softmax probabilities (FP32 [N, C]),
  or raw logits (FP32 [N, 1, C], one `[[...]]` per input as KServe returns them);
- token_classification: label ids per token (INT64 [N, 1, S]), or per-token probabilities /
  raw logits (FP32 [N, 1, S, C]);
- text_embedding: mean pooling over the attention mask, then L2 normalisation (FP32 [N, H]),
  as sentence-transformers computes it;
- rerank: the raw logit of the single-label cross-encoder (FP32 [N]); no sigmoid is applied,
  so the order is the model's and values are unbounded (apply `sigmoid` for a 0..1 score).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from services.common.errors import InvalidArgument


def softmax(values: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = values - values.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def sequence_classification(
    logits: np.ndarray, *, return_probabilities: bool = False, return_raw_logits: bool = False
) -> np.ndarray:
    """`logits` [N, C] → class ids [N], probabilities [N, C] or raw logits [N, 1, C]."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise InvalidArgument(
            f"sequence classification logits must be [N, C], got {list(logits.shape)}"
        )
    if return_raw_logits:
        return logits[:, None, :].copy()
    if return_probabilities:
        return softmax(logits).astype(np.float32)
    return logits.argmax(axis=-1).astype(np.int64)


def token_classification(
    logits: np.ndarray, *, return_probabilities: bool = False, return_raw_logits: bool = False
) -> np.ndarray:
    """`logits` [N, S, C] → label ids [N, 1, S], or probabilities / raw logits [N, 1, S, C]."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise InvalidArgument(
            f"token classification logits must be [N, S, C], got {list(logits.shape)}"
        )
    if return_raw_logits:
        return logits[:, None, :, :].copy()
    if return_probabilities:
        return softmax(logits)[:, None, :, :].astype(np.float32)
    return logits.argmax(axis=-1)[:, None, :].astype(np.int64)


def mask_positions(input_ids: np.ndarray, mask_token_id: int) -> list[np.ndarray]:
    """Mask positions per input; an input without a mask token is a bad request."""
    positions = []
    for row, ids in enumerate(np.asarray(input_ids)):
        found = np.flatnonzero(ids == mask_token_id)
        if found.size == 0:
            raise InvalidArgument(f"fill_mask input {row} has no mask token (id {mask_token_id})")
        positions.append(found)
    return positions


def fill_mask(
    logits: np.ndarray,
    input_ids: np.ndarray,
    *,
    mask_token_id: int,
    decode: Callable[[list[int]], str],
    return_probabilities: bool = False,
    return_raw_logits: bool = False,
) -> np.ndarray:
    """`logits` [N, S, V] → decoded predictions (BYTES [N]).

    With several masks in one input their predictions are decoded together into one
    string, as KServe does. Raw logits / probabilities are FP32 [N, M, V] at the M
    mask positions (every input must then hold the same number of masks).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise InvalidArgument(f"fill_mask logits must be [N, S, V], got {list(logits.shape)}")
    positions = mask_positions(input_ids, mask_token_id)
    if return_raw_logits or return_probabilities:
        counts = {p.size for p in positions}
        if len(counts) != 1:
            raise InvalidArgument(
                "fill_mask raw logits/probabilities need the same number of masks in every input"
            )
        picked = np.stack([logits[row, pos] for row, pos in enumerate(positions)])
        return picked if return_raw_logits else softmax(picked).astype(np.float32)
    out = np.empty(len(positions), dtype=object)
    for row, pos in enumerate(positions):
        predicted = logits[row, pos].argmax(axis=-1)
        out[row] = decode([int(t) for t in predicted]).encode("utf-8")
    return out


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the token vectors the mask keeps: `hidden` [N, S, H], mask [N, S] → [N, H]."""
    hidden = np.asarray(hidden, dtype=np.float32)
    mask = np.asarray(attention_mask, dtype=np.float32)[:, :, None]
    summed = (hidden * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    return summed / counts


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.clip(norms, eps, None)).astype(np.float32)


def text_embedding(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean pooling + L2 normalisation, FP32 [N, H]."""
    if np.ndim(hidden) != 3:
        raise InvalidArgument(
            f"embedding hidden states must be [N, S, H], got {list(np.shape(hidden))}"
        )
    return l2_normalize(mean_pool(hidden, attention_mask))


def rerank_scores(logits: np.ndarray) -> np.ndarray:
    """Cross-encoder logits [N, 1] (or [N]) → raw scores FP32 [N]."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0].copy()
    if logits.ndim == 1:
        return logits.copy()
    raise InvalidArgument(f"rerank needs single-label logits [N, 1], got {list(logits.shape)}")
