"""Pooling models on the vLLM engine, with the HF engine's encoder tensors, checked against
transformers.

Three engine processes, planned as the launcher plans them and started together:
all-MiniLM-L6-v2 (real sentence embeddings, `text_embedding`), the tiny BERT
cross-encoder (`rerank`) and the tiny BERT sentiment classifier
(`sequence_classification`). The last test stops one with SIGTERM and expects exit 0.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import wait_until
from tests.helpers.triton import bytes_input as _bytes
from tests.helpers.triton import clients as triton_clients
from tests.helpers.triton import int_input as _ints

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
]
QUERY = "what is a cat"
DOCUMENTS = ["a cat is a small animal", "the stock market fell", "cats and dogs"]


@pytest.fixture(scope="module")
def engines(model_path, tmp_path_factory):
    models = [
        model_entry("minilm", model_path("all-minilm-l6-v2"), "text_embedding", "vllm"),
        model_entry("reranker", model_path("tiny-bert-reranker"), "rerank", "vllm"),
        model_entry(
            "sentiment", model_path("tiny-bert-sentiment"), "sequence_classification", "vllm"
        ),
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with running_mesh(models, tmp_path_factory.mktemp("mesh"), engines_only=True, env=env) as mesh:
        yield {entry.name: mesh.engine(entry.name) for entry in models}


@pytest.fixture(scope="module")
def clients(engines):
    with triton_clients(engines) as made:
        yield made


def _transformers(model_path, name: str, auto_class: str):
    import transformers

    path = model_path(name)
    return getattr(transformers, auto_class).from_pretrained(
        path
    ).eval(), transformers.AutoTokenizer.from_pretrained(path)


def test_text_embeddings_match_transformers_mean_pooling(clients, model_path):
    import torch

    reply = clients["minilm"].infer("minilm", [_bytes("input-0", SENTENCES)])
    vectors = reply.as_numpy("output-0")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    model, tokenizer = _transformers(model_path, "all-minilm-l6-v2", "AutoModel")
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=2e-4)
    assert vectors[0] @ vectors[1] == pytest.approx(0.755, abs=0.01)
    assert abs(vectors[0] @ vectors[2]) < 0.05


def test_tensor_style_embeddings_equal_the_text_style(clients, model_path):
    _, tokenizer = _transformers(model_path, "all-minilm-l6-v2", "AutoModel")
    encoded = tokenizer(SENTENCES[:2], padding=True, return_tensors="np")
    reply = clients["minilm"].infer(
        "minilm",
        [
            _ints("input_ids", encoded["input_ids"]),
            _ints("attention_mask", encoded["attention_mask"]),
        ],
    )
    assert [o.name for o in reply.get_response().outputs] == ["embeddings"]
    text = (
        clients["minilm"].infer("minilm", [_bytes("input-0", SENTENCES[:2])]).as_numpy("output-0")
    )
    np.testing.assert_allclose(reply.as_numpy("embeddings"), text, atol=1e-5)


def test_rerank_scores_are_the_cross_encoder_logits(clients, model_path):
    import torch

    reply = clients["reranker"].infer(
        "reranker", [_bytes("query", [QUERY]), _bytes("documents", DOCUMENTS)]
    )
    scores = reply.as_numpy("output-0")
    model, tokenizer = _transformers(
        model_path, "tiny-bert-reranker", "AutoModelForSequenceClassification"
    )
    encoded = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**encoded).logits[:, 0].numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)

    pair = tokenizer(QUERY, DOCUMENTS[0], return_tensors="np")
    raw = clients["reranker"].infer(
        "reranker",
        [_ints("input_ids", pair["input_ids"]), _ints("token_type_ids", pair["token_type_ids"])],
    )
    np.testing.assert_allclose(raw.as_numpy("scores"), expected[:1], atol=1e-4)
    assert raw.as_numpy("logits").shape == (1, 1)


def test_sequence_classification_answers_like_kserve(clients, model_path):
    import torch

    model, tokenizer = _transformers(
        model_path, "tiny-bert-sentiment", "AutoModelForSequenceClassification"
    )
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**encoded).logits.numpy()
    labels = (
        clients["sentiment"].infer("sentiment", [_bytes("input-0", SENTENCES)]).as_numpy("output-0")
    )
    assert labels.tolist() == logits.argmax(-1).tolist()
    probabilities = (
        clients["sentiment"]
        .infer(
            "sentiment", [_bytes("input-0", SENTENCES)], parameters={"return_probabilities": True}
        )
        .as_numpy("output-0")
    )
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    raw = clients["sentiment"].infer(
        "sentiment",
        [
            _ints("input_ids", encoded["input_ids"].numpy()),
            _ints("attention_mask", encoded["attention_mask"].numpy()),
        ],
    )
    np.testing.assert_allclose(raw.as_numpy("logits"), logits, atol=1e-4)


def test_bad_encoder_inputs_are_invalid_argument(clients):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        clients["minilm"].infer("minilm", [_ints("input_ids", np.array([[101, 10**7, 102]]))])
    assert (
        raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        and "input_ids" in raised.value.message()
    )
    with pytest.raises(InferenceServerException) as generative:
        clients["minilm"].infer("minilm", [_bytes("text_input", ["hi"]), _bytes("input-1", ["x"])])
    assert generative.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert clients["minilm"].infer("minilm", [_bytes("input-0", ["still serving"])]).as_numpy(
        "output-0"
    ).shape == (1, 384)


def test_sigterm_drains_and_exits_zero(engines):
    service = engines["reranker"]
    service.kill(signal.SIGTERM)
    assert wait_until(lambda: not service.alive(), 60, interval=0.2)
    assert service.process.returncode == 0, service.log()[-2000:]
