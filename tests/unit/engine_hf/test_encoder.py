"""Encoder tasks in process: parity with transformers, every text-path result, dynamic batching,
bad input."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from services.common.engine import EncodeRequest, GenerateRequest, SamplingParams
from services.common.errors import InvalidArgument, NotFound, Unimplemented

TEXTS = [
    "Paris is a city in France.",
    "The weather in London was terrible today, said Maria Garcia.",
]
MASKED = ["Paris is the [MASK] of France.", "Alice went to [MASK] on [MASK]."]

ENCODERS = [
    ("tiny-bert-fill-mask", "AutoModelForMaskedLM", {}),
    ("tiny-bert-sentiment", "AutoModelForSequenceClassification", {}),
    ("tiny-bert-ner", "AutoModelForTokenClassification", {}),
    ("tiny-bert-reranker", "AutoModelForSequenceClassification", {"task": "rerank"}),
]


def _direct(reference, model: str, auto_class: str, *texts):
    loaded, tokenizer = reference(model, auto_class)
    encoded = tokenizer(*texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = loaded(**encoded)
    return encoded, out


@pytest.mark.parametrize("model,auto_class,overrides", ENCODERS)
async def test_tensor_path_logits_match_transformers(
    engine, reference, model, auto_class, overrides
):
    encoded, out = _direct(reference, model, auto_class, TEXTS)
    served = await engine(model, **overrides)
    tensors = {k: v.numpy() for k, v in encoded.items()}
    result = await served.encode(EncodeRequest("t", model, tensors=tensors))
    assert result.outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(result.outputs["logits"], out.logits.numpy(), atol=1e-5, rtol=0)


async def test_fill_mask_text_answers_decoded_predictions(engine, reference):
    encoded, out = _direct(reference, "tiny-bert-fill-mask", "AutoModelForMaskedLM", MASKED)
    _, tokenizer = reference("tiny-bert-fill-mask", "AutoModelForMaskedLM")
    expected = []
    for row in range(len(MASKED)):
        at = (encoded["input_ids"][row] == tokenizer.mask_token_id).nonzero().ravel()
        expected.append(tokenizer.decode(out.logits[row, at].argmax(-1)).encode())
    served = await engine("tiny-bert-fill-mask")
    result = await served.encode(EncodeRequest("t", "tiny-bert-fill-mask", texts=MASKED))
    assert result.outputs["output-0"].tolist() == expected


async def test_sequence_classification_text_forms(engine, reference):
    _, out = _direct(reference, "tiny-bert-sentiment", "AutoModelForSequenceClassification", TEXTS)
    served = await engine("tiny-bert-sentiment")
    plain = await served.encode(EncodeRequest("t", "tiny-bert-sentiment", texts=TEXTS))
    assert plain.outputs["output-0"].tolist() == out.logits.argmax(-1).tolist()
    probs = await served.encode(
        EncodeRequest(
            "t", "tiny-bert-sentiment", texts=TEXTS, options={"return_probabilities": True}
        )
    )
    np.testing.assert_allclose(
        probs.outputs["output-0"], torch.softmax(out.logits, -1).numpy(), atol=1e-6
    )
    raw = await served.encode(
        EncodeRequest("t", "tiny-bert-sentiment", texts=TEXTS, options={"return_raw_logits": True})
    )
    np.testing.assert_allclose(raw.outputs["output-0"][:, 0], out.logits.numpy(), atol=1e-5)


async def test_token_classification_label_ids_per_token(engine, reference):
    encoded, out = _direct(reference, "tiny-bert-ner", "AutoModelForTokenClassification", TEXTS)
    served = await engine("tiny-bert-ner")
    result = await served.encode(EncodeRequest("t", "tiny-bert-ner", texts=TEXTS))
    labels = result.outputs["output-0"]
    assert labels.shape == (2, 1, encoded["input_ids"].shape[1])
    assert labels[:, 0].tolist() == out.logits.argmax(-1).tolist()


async def test_rerank_scores_are_cross_encoder_logits(engine, reference):
    query, docs = (
        "where is paris",
        ["Paris is in France.", "Bananas are yellow.", "London is in England."],
    )
    _, out = _direct(
        reference, "tiny-bert-reranker", "AutoModelForSequenceClassification", [query] * 3, docs
    )
    served = await engine("tiny-bert-reranker", task="rerank")
    result = await served.encode(
        EncodeRequest("t", "tiny-bert-reranker", pairs=[(query, d) for d in docs])
    )
    np.testing.assert_allclose(result.outputs["output-0"], out.logits[:, 0].numpy(), atol=1e-5)
    with pytest.raises(InvalidArgument, match="pairs"):
        await served.encode(EncodeRequest("t", "tiny-bert-reranker", texts=docs))


async def test_minilm_embedding_is_mean_pooling_plus_normalisation(engine, reference):
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    encoded, out = _direct(reference, "all-minilm-l6-v2", "AutoModel", sentences)
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    expected = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    served = await engine("all-minilm-l6-v2")
    result = await served.encode(EncodeRequest("t", "all-minilm-l6-v2", texts=sentences))
    vectors = result.outputs["output-0"]
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # The real model's semantics (DESIGN.md §8): similar sentences close, unrelated ones not.
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.755, abs=0.01)
    assert abs(float(vectors[0] @ vectors[2])) < 0.05
    tensors = await served.encode(
        EncodeRequest("t", "all-minilm-l6-v2", tensors={k: v.numpy() for k, v in encoded.items()})
    )
    np.testing.assert_allclose(
        tensors.outputs["last_hidden_state"], out.last_hidden_state.numpy(), atol=1e-5
    )
    np.testing.assert_allclose(tensors.outputs["embeddings"], expected, atol=1e-5)


async def test_concurrent_requests_are_batched_and_unaffected_by_it(engine):
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(16)]
    alone = await engine("tiny-bert-ner", max_batch_size=1)
    batched = await engine("tiny-bert-ner", max_batch_size=32, max_batch_wait_ms=50.0)
    before = batched._batcher.batches
    results = await asyncio.gather(
        *(
            batched.encode(
                EncodeRequest(
                    str(i), "tiny-bert-ner", texts=[t], options={"return_raw_logits": True}
                )
            )
            for i, t in enumerate(texts)
        )
    )
    assert batched._batcher.batches - before < len(texts) // 2
    single_before = alone._batcher.batches
    for text, result in zip(texts, results, strict=True):
        own = await alone.encode(
            EncodeRequest("s", "tiny-bert-ner", texts=[text], options={"return_raw_logits": True})
        )
        np.testing.assert_allclose(result.outputs["output-0"], own.outputs["output-0"], atol=1e-5)
    assert alone._batcher.batches - single_before == len(texts)


async def test_one_request_at_a_time_with_max_batch_size_1(engine):
    alone = await engine("tiny-bert-sentiment", max_batch_size=1)
    before = alone._batcher.batches
    await asyncio.gather(
        *(
            alone.encode(EncodeRequest(str(i), "tiny-bert-sentiment", texts=[TEXTS[0]]))
            for i in range(6)
        )
    )
    assert alone._batcher.batches - before == 6


@pytest.mark.parametrize(
    "tensors,message",
    [
        ({"input_ids": np.array([[2, 10, 99999, 3]])}, "input_ids': values must be in"),
        (
            {"input_ids": np.array([[2, 10, 3]]), "pixel_values": np.array([[1, 1, 1]])},
            "unknown input 'pixel_values'",
        ),
        (
            {"input_ids": np.array([[2, 10, 3]]), "attention_mask": np.array([[1, 1]])},
            "attention_mask': shape",
        ),
        ({"attention_mask": np.array([[1, 1]])}, "'input_ids' is required"),
        ({"input_ids": np.zeros((1, 0), dtype=np.int64)}, "non-empty"),
    ],
)
async def test_bad_tensors_fail_alone_without_hurting_their_batch(engine, tensors, message):
    served = await engine("tiny-bert-sentiment", max_batch_wait_ms=50.0)
    good = served.encode(EncodeRequest("good", "tiny-bert-sentiment", texts=TEXTS))
    bad = served.encode(EncodeRequest("bad", "tiny-bert-sentiment", tensors=tensors))
    ok, failed = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(failed, InvalidArgument) and message in failed.message
    assert ok.outputs["output-0"].shape == (2,)


async def test_fill_mask_needs_a_mask_and_unknown_models_are_not_found(engine):
    served = await engine("tiny-bert-fill-mask")
    with pytest.raises(InvalidArgument, match="no mask token"):
        await served.encode(EncodeRequest("t", "tiny-bert-fill-mask", texts=["no mask here"]))
    with pytest.raises(NotFound):
        await served.encode(EncodeRequest("t", "someone-else", texts=["x"]))
    with pytest.raises(Unimplemented, match="fill_mask"):
        async for _ in served.generate(
            GenerateRequest("g", "tiny-bert-fill-mask", SamplingParams(), prompt="hi")
        ):
            pass


async def test_text_requests_report_their_token_counts_when_asked(engine, reference):
    _, tokenizer = reference("tiny-bert-ner", "AutoModelForTokenClassification")
    served = await engine("tiny-bert-ner")
    plain = await served.encode(EncodeRequest("t", "tiny-bert-ner", texts=TEXTS))
    assert set(plain.outputs) == {"output-0"}
    counted = await served.encode(
        EncodeRequest("t", "tiny-bert-ner", texts=TEXTS, options={"return_num_input_tokens": True})
    )
    counts = counted.outputs["num_input_tokens"]
    assert counts.dtype == np.int64
    assert counts.tolist() == [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    np.testing.assert_array_equal(counted.outputs["output-0"], plain.outputs["output-0"])
    with pytest.raises(InvalidArgument, match="return_num_input_tokens"):
        await served.encode(
            EncodeRequest("t", "tiny-bert-ner", texts=TEXTS, options={"return_num_input_tokens": 7})
        )
