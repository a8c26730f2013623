"""Pooling models on the vLLM engine, with the HF engine's encoder tensors, checked against transformers.

Three engine processes, started together: all-MiniLM-L6-v2 (real sentence
embeddings, task inferred from `BertModel`), the tiny BERT cross-encoder
(`--task rerank`) and the tiny BERT sentiment classifier (task inferred from
`BertForSequenceClassification`). The last test stops one with SIGTERM and expects exit 0.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.procs import start_service, wait_ready

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
QUERY = "what is a cat"
DOCUMENTS = ["a cat is a small animal", "the stock market fell", "cats and dogs"]


@pytest.fixture(scope="module")
def engines(model_path):
    specs = {
        "minilm": [model_path("all-minilm-l6-v2")],
        "reranker": [model_path("tiny-bert-reranker"), "--task", "rerank"],
        "sentiment": [model_path("tiny-bert-sentiment")],
    }
    started = {}
    try:
        for name, (folder, *extra) in specs.items():
            args = ["--model_dir", folder, "--model_name", name, "--host", "127.0.0.1", *extra]
            started[name] = start_service("services.engine_vllm", args, name=f"engine_vllm-{name}",
                                          env={"VLLM_CPU_KVCACHE_SPACE": "1"}, ready="none")
        for service in started.values():
            wait_ready(service, "grpc", timeout=300)
        yield started
    finally:
        for service in started.values():
            service.stop()


@pytest.fixture(scope="module")
def clients(engines):
    made = {name: tgrpc.InferenceServerClient(service.address) for name, service in engines.items()}
    yield made
    for c in made.values():
        c.close()


def _bytes(name: str, values: list[str]) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    return tensor


def _ints(name: str, array: np.ndarray) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(array.shape), "INT64")
    tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    return tensor


def _transformers(model_path, name: str, auto_class: str):
    import transformers

    path = model_path(name)
    return getattr(transformers, auto_class).from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


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
        "minilm", [_ints("input_ids", encoded["input_ids"]), _ints("attention_mask", encoded["attention_mask"])]
    )
    assert [o.name for o in reply.get_response().outputs] == ["embeddings"]
    text = clients["minilm"].infer("minilm", [_bytes("input-0", SENTENCES[:2])]).as_numpy("output-0")
    np.testing.assert_allclose(reply.as_numpy("embeddings"), text, atol=1e-5)


def test_rerank_scores_are_the_cross_encoder_logits(clients, model_path):
    import torch

    reply = clients["reranker"].infer("reranker", [_bytes("query", [QUERY]), _bytes("documents", DOCUMENTS)])
    scores = reply.as_numpy("output-0")
    model, tokenizer = _transformers(model_path, "tiny-bert-reranker", "AutoModelForSequenceClassification")
    encoded = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**encoded).logits[:, 0].numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)

    pair = tokenizer(QUERY, DOCUMENTS[0], return_tensors="np")
    raw = clients["reranker"].infer(
        "reranker", [_ints("input_ids", pair["input_ids"]), _ints("token_type_ids", pair["token_type_ids"])]
    )
    np.testing.assert_allclose(raw.as_numpy("scores"), expected[:1], atol=1e-4)
    assert raw.as_numpy("logits").shape == (1, 1)


def test_sequence_classification_answers_like_kserve(clients, model_path):
    import torch

    model, tokenizer = _transformers(model_path, "tiny-bert-sentiment", "AutoModelForSequenceClassification")
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**encoded).logits.numpy()
    labels = clients["sentiment"].infer("sentiment", [_bytes("input-0", SENTENCES)]).as_numpy("output-0")
    assert labels.tolist() == logits.argmax(-1).tolist()
    probabilities = clients["sentiment"].infer(
        "sentiment", [_bytes("input-0", SENTENCES)], parameters={"return_probabilities": True}
    ).as_numpy("output-0")
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    raw = clients["sentiment"].infer(
        "sentiment", [_ints("input_ids", encoded["input_ids"].numpy()), _ints("attention_mask", encoded["attention_mask"].numpy())]
    )
    np.testing.assert_allclose(raw.as_numpy("logits"), logits, atol=1e-4)


def test_bad_encoder_inputs_are_invalid_argument(clients):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        clients["minilm"].infer("minilm", [_ints("input_ids", np.array([[101, 10**7, 102]]))])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "input_ids" in raised.value.message()
    with pytest.raises(InferenceServerException) as generative:
        clients["minilm"].infer("minilm", [_bytes("text_input", ["hi"]), _bytes("input-1", ["x"])])
    assert generative.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert clients["minilm"].infer("minilm", [_bytes("input-0", ["still serving"])]).as_numpy("output-0").shape == (1, 384)


def test_sigterm_drains_and_exits_zero(engines):
    service = engines["reranker"]
    service.kill(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while service.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not service.alive()
    assert service.process.returncode == 0, service.log()[-2000:]
