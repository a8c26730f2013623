"""Sequence packing: layout, and packed embedding batches equal padded forwards."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from services.common import task_results
from services.common.engine import EncodeRequest
from services.engine_hf.packing import pack, unpack

SENTENCES = [
    "A man is eating food.",
    "The new library opened downtown with a large collection of science books and old maps.",
    "Hi",
    "How do I reset my password?",
    "The stock market fell sharply today after the announcement.",
]


def test_layout_positions_and_block_mask():
    sequences = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])]
    inputs, places = pack(sequences, None, torch.device("cpu"), row_tokens=6)
    ids, positions, mask = (
        inputs["input_ids"].numpy(),
        inputs["position_ids"].numpy(),
        inputs["attention_mask"].numpy(),
    )
    for sequence, place in zip(sequences, places, strict=True):
        columns = slice(place.start, place.start + place.length)
        assert ids[place.row, columns].tolist() == sequence.tolist()
        assert positions[place.row, columns].tolist() == list(range(len(sequence)))
        block = mask[place.row, 0, columns, columns]
        assert (block == 0).all()
        outside = np.delete(mask[place.row, 0, columns], np.r_[columns], axis=1)
        assert (outside < -1e30).all()
    assert ids.shape[0] == 2  # 4+2 in one row of 6, 3 in the next
    restored = unpack(np.arange(ids.size, dtype=np.float32).reshape(*ids.shape, 1), places, 5)
    assert restored.shape == (3, 5, 1) and (restored[1, 2:] == 0).all()


async def test_packed_embeddings_equal_a_padded_forward(engine, reference):
    served = await engine("all-minilm-l6-v2", max_batch_wait_ms=50.0)
    assert served._runner.packing
    model, tokenizer = reference("all-minilm-l6-v2", "AutoModel")
    results = await asyncio.gather(
        *(
            served.encode(EncodeRequest(str(i), "all-minilm-l6-v2", texts=[s, s.upper()]))
            for i, s in enumerate(SENTENCES)
        )
    )
    for sentence, result in zip(SENTENCES, results, strict=True):
        encoded = tokenizer([sentence, sentence.upper()], padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state.numpy()
        expected = task_results.text_embedding(hidden, encoded["attention_mask"].numpy())
        np.testing.assert_allclose(result.outputs["output-0"], expected, atol=1e-5)


async def test_models_that_need_their_pooler_are_not_packed(engine):
    assert not (await engine("tiny-bert-sentiment"))._runner.packing
