"""services.common.task_results: post-processing from raw outputs, checked against explicit
computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common import task_results
from services.common.errors import InvalidArgument

RNG = np.random.default_rng(7)


def test_sequence_classification_forms():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    assert task_results.sequence_classification(logits).tolist() == [1, 0]
    probs = task_results.sequence_classification(logits, return_probabilities=True)
    row = [math.exp(v) for v in logits[0]]
    assert probs.dtype == np.float32 and probs.shape == (2, 3)
    assert probs[0] == pytest.approx([v / sum(row) for v in row], rel=1e-6)
    raw = task_results.sequence_classification(logits, return_raw_logits=True)
    assert raw.shape == (2, 1, 3) and np.array_equal(raw[:, 0], logits)


def test_token_classification_shapes_follow_kserve():
    logits = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    ids = task_results.token_classification(logits)
    assert ids.shape == (2, 1, 5) and ids.dtype == np.int64
    assert ids[1, 0].tolist() == [int(np.argmax(logits[1, s])) for s in range(5)]
    probs = task_results.token_classification(logits, return_probabilities=True)
    assert probs.shape == (2, 1, 5, 4)
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_fill_mask_decodes_each_input_at_its_masks():
    vocab = 10
    logits = np.zeros((2, 4, vocab), dtype=np.float32)
    logits[0, 2, 7] = 5.0
    logits[1, 1, 3] = 5.0
    logits[1, 3, 4] = 5.0
    input_ids = np.array([[1, 5, 9, 2], [1, 9, 6, 9]])
    decoded = task_results.fill_mask(
        logits, input_ids, mask_token_id=9, decode=lambda ids: "+".join(map(str, ids))
    )
    assert decoded.tolist() == [b"7", b"3+4"]


def test_fill_mask_without_a_mask_is_a_bad_request():
    with pytest.raises(InvalidArgument, match="input 1 has no mask token"):
        task_results.fill_mask(
            np.zeros((2, 3, 5)), np.array([[1, 4, 2], [1, 2, 2]]), mask_token_id=4, decode=str
        )


def test_fill_mask_raw_logits_at_masks():
    logits = RNG.normal(size=(1, 4, 6)).astype(np.float32)
    raw = task_results.fill_mask(
        logits, np.array([[0, 5, 1, 5]]), mask_token_id=5, decode=str, return_raw_logits=True
    )
    assert raw.shape == (1, 2, 6) and np.array_equal(raw[0], logits[0, [1, 3]])


def test_text_embedding_is_masked_mean_then_unit_norm():
    hidden = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = task_results.text_embedding(hidden, mask)
    expected = hidden[0, :2].mean(axis=0)
    expected /= np.linalg.norm(expected)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert np.allclose(out[0], expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_rerank_scores_are_raw_single_label_logits():
    assert task_results.rerank_scores(np.array([[0.5], [-2.0]])).tolist() == [0.5, -2.0]
    with pytest.raises(InvalidArgument, match="single-label"):
        task_results.rerank_scores(np.zeros((2, 3)))
