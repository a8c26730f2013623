"""`/tokenize`, `/detokenize`, `/score` and `/classify` over the in-process mesh (fake engine,
real tokenizer service): tokens from the tokenizer service, scores and classes agreeing with the
V2 infer results of the same model, errors in the OpenAI envelope."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from services.common import task_results

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]


async def test_tokenize_chat_round_trips_and_counts_like_chat(http, model_path):
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    reply = await http.post(
        "/openai/tokenize", json={"model": "llm", "messages": CHAT, "return_token_strs": True}
    )
    assert reply.status_code == 200, reply.text
    tokens = reply.json()
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert tokens["tokens"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 64
    assert tokens["token_strs"] == tokenizer.convert_ids_to_tokens(tokens["tokens"])
    back = await http.post("/openai/detokenize", json={"model": "llm", "tokens": tokens["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": prompt}
    chat = await http.post(
        "/openai/v1/chat/completions", json={"model": "llm", "messages": CHAT, "max_tokens": 2}
    )
    assert chat.json()["usage"]["prompt_tokens"] == tokens["count"]


async def test_tokenize_prompt(http, model_path):
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    reply = await http.post("/openai/tokenize", json={"model": "llm", "prompt": "Hello world"})
    assert reply.json() == {
        "count": len(tokenizer("Hello world")["input_ids"]),
        "max_model_len": 64,
        "tokens": tokenizer("Hello world")["input_ids"],
        "token_strs": None,
    }
    plain = await http.post(
        "/openai/tokenize",
        json={"model": "llm", "prompt": "Hello world", "add_special_tokens": False},
    )
    assert plain.json()["tokens"] == tokenizer("Hello world", add_special_tokens=False)["input_ids"]


async def _v2(http, model: str, inputs: list[dict], parameters: dict | None = None) -> np.ndarray:
    reply = await http.post(
        f"/v2/models/{model}/infer", json={"inputs": inputs, "parameters": parameters or {}}
    )
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float64).reshape(out["shape"])


async def test_score_on_a_cross_encoder_agrees_with_v2(http):
    docs = ["Paris is in France.", "Bananas are yellow.", "Lyon too."]
    reply = await http.post(
        "/openai/v1/score", json={"model": "rerank", "text_1": "capital", "text_2": docs}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    logits = await _v2(
        http,
        "rerank",
        [
            {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["capital"]},
            {"name": "documents", "shape": [3], "datatype": "BYTES", "data": docs},
        ],
    )
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "score" for d in body["data"])
    np.testing.assert_allclose(
        [d["score"] for d in body["data"]], task_results.sigmoid(logits.ravel()), rtol=1e-6
    )
    assert body["object"] == "list" and body["model"] == "rerank"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    pairwise = await http.post(
        "/openai/score",
        json={"model": "rerank", "queries": ["capital"] * 3, "documents": docs},
    )
    assert [d["score"] for d in pairwise.json()["data"]] == [d["score"] for d in body["data"]]


async def test_score_on_an_embedding_model_is_the_cosine(http):
    texts_1, texts_2 = ["a man eats", "stocks fell"], ["a man eats food", "the sea"]
    reply = await http.post(
        "/openai/v1/score", json={"model": "embed", "text_1": texts_1, "text_2": texts_2}
    )
    assert reply.status_code == 200, reply.text
    left = await _v2(
        http, "embed", [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts_1}]
    )
    right = await _v2(
        http, "embed", [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts_2}]
    )
    cosine = (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))
    np.testing.assert_allclose([d["score"] for d in reply.json()["data"]], cosine, rtol=1e-5)


async def test_classify_agrees_with_v2(http):
    texts = ["I loved it", "worst day ever"]
    reply = await http.post("/openai/classify", json={"model": "sentiment", "input": texts})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    probs = await _v2(
        http,
        "sentiment",
        [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts}],
        {"return_probabilities": True},
    )
    assert body["object"] == "list" and body["id"].startswith("classify-")
    for index, item in enumerate(body["data"]):
        assert item["index"] == index and item["num_classes"] == probs.shape[1]
        np.testing.assert_allclose(item["probs"], probs[index], rtol=1e-6)
        assert item["label"] == f"LABEL_{int(np.argmax(probs[index]))}"
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/openai/tokenize", {"prompt": "x"}, "'model' is required"),
        ("/openai/tokenize", {"model": "llm", "prompt": "x", "messages": CHAT}, "exactly one"),
        ("/openai/tokenize", {"model": "nope", "prompt": "x"}, "does not exist"),
        ("/openai/detokenize", {"model": "llm", "tokens": [-1]}, "tokens"),
        ("/openai/detokenize", {"model": "llm", "tokens": [10**9]}, "outside the vocabulary"),
        ("/openai/score", {"model": "llm", "text_1": "a", "text_2": "b"}, "task"),
        ("/openai/score", {"model": "rerank", "text_1": ["a", "b"], "text_2": ["c"]}, "one text"),
        ("/openai/score", {"model": "rerank", "text_1": "a"}, "text_2"),
        ("/openai/classify", {"model": "embed", "input": "x"}, "sequence_classification"),
        ("/openai/classify", {"model": "sentiment", "input": []}, "empty"),
    ],
)
async def test_errors_are_openai_400s(http, path, body, message):
    reply = await http.post(path, json=body)
    expected = 404 if body.get("model") == "nope" else 400
    assert reply.status_code == expected, reply.text
    error = reply.json()["error"]
    assert message in error["message"] and error["type"]
