"""OpenAI routes against the in-process mesh (fake engine, real tokenizer service)."""

from __future__ import annotations

import base64
import json

import numpy as np
from transformers import AutoTokenizer

from services.common import task_results
from tests.fakes import fake_text as expected_text
from tests.fakes import fake_token


def llama_ids(model_path, text: str) -> list[int]:
    return AutoTokenizer.from_pretrained(model_path("tiny-llama"))(text)["input_ids"]


async def sse_events(response) -> list:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_completion_text_usage_and_sampling_passthrough(http, mesh, model_path):
    body = {
        "model": "llm",
        "prompt": "Hello there",
        "max_tokens": 5,
        "temperature": 0.3,
        "seed": 11,
        "stop": ["zzz"],
        "top_k": 4,
        "presence_penalty": 0.5,
    }
    reply = await http.post("/openai/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    ids = llama_ids(model_path, "Hello there")
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == expected_text(ids, 5)
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 5,
        "total_tokens": len(ids) + 5,
    }
    sent = mesh.engine.requests[-1]
    assert sent.prompt_token_ids == ids
    assert (
        sent.sampling.temperature,
        sent.sampling.seed,
        sent.sampling.stop,
        sent.sampling.top_k,
    ) == (0.3, 11, ["zzz"], 4)
    assert sent.sampling.presence_penalty == 0.5 and sent.sampling.max_tokens == 5


async def test_completion_n_prompts_echo_and_stop(http, model_path):
    reply = await http.post(
        "/openai/v1/completions",
        json={"model": "llm", "prompt": ["a b", "c"], "n": 2, "max_tokens": 3, "echo": True},
    )
    assert reply.status_code == 200, reply.text
    choices = reply.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice in choices:
        prompt = ["a b", "c"][choice["index"] // 2]
        ids = llama_ids(model_path, prompt)
        assert choice["text"] == prompt + expected_text(ids, 3, choice["index"] % 2)
    ids = llama_ids(model_path, "x")
    stop_at = f"w{fake_token(ids, 0, 1)}"
    reply = await http.post(
        "/openai/v1/completions",
        json={"model": "llm", "prompt": "x", "max_tokens": 8, "stop": stop_at},
    )
    choice = reply.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert stop_at not in choice["text"]


async def test_completion_logprobs(http):
    reply = await http.post(
        "/openai/v1/completions",
        json={"model": "llm", "prompt": "hi", "max_tokens": 3, "logprobs": 1},
    )
    assert reply.status_code == 200, reply.text
    logprobs = reply.json()["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"] == [-0.1, -0.2, -0.30000000000000004]
    assert len(logprobs["tokens"]) == 3 and all(isinstance(t, str) for t in logprobs["tokens"])
    assert all(len(top) == 1 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0


async def test_chat_matches_streamed_chat_and_sse_contract(http, model_path):
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 6,
        "n": 2,
    }
    whole = await http.post("/openai/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    choices = whole.json()["choices"]
    assert [c["message"]["content"] for c in choices] == [
        expected_text(ids, 6, 0),
        expected_text(ids, 6, 1),
    ]
    async with http.stream(
        "POST",
        "/openai/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(reply)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 12
    chunks = events[:-2]
    assert all("usage" in c and c["usage"] is None for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert (
            sum(1 for c in mine if c["finish_reason"]) == 1
            and mine[-1]["finish_reason"] == "length"
        )
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert text == choices[index]["message"]["content"]


async def test_chat_logprobs_and_default_max_tokens(http, mesh):
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": True,
        "top_logprobs": 2,
    }
    reply = await http.post("/openai/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    sent = mesh.engine.requests[-1]
    assert sent.sampling.max_tokens == 64 - len(sent.prompt_token_ids)  # the rest of the context
    content = reply.json()["choices"][0]["logprobs"]["content"]
    assert content[0]["logprob"] == -0.1 and len(content[0]["top_logprobs"]) == 2
    assert content[0]["top_logprobs"][0]["logprob"] >= content[0]["top_logprobs"][1]["logprob"]


async def test_embeddings_float_and_base64(http, mesh, model_path):
    texts = ["A man is eating food.", "The stock market fell."]
    floats = await http.post("/openai/v1/embeddings", json={"model": "embed", "input": texts})
    encoded = await http.post(
        "/openai/v1/embeddings",
        json={"model": "embed", "input": texts, "encoding_format": "base64"},
    )
    assert floats.status_code == 200 and encoded.status_code == 200, floats.text
    tokenizer = AutoTokenizer.from_pretrained(model_path("all-minilm-l6-v2"))
    batch = tokenizer(texts, padding=True, return_tensors="np")
    ids = batch["input_ids"].astype(np.float32)
    hidden = np.stack([np.sin(ids * (h + 1) / 50.0) for h in range(8)], axis=-1)
    want = task_results.text_embedding(hidden, batch["attention_mask"])
    got = np.asarray([d["embedding"] for d in floats.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    decoded = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded.json()["data"]
    ]
    np.testing.assert_array_equal(np.stack(decoded), got)
    assert floats.json()["usage"]["prompt_tokens"] == int(batch["attention_mask"].sum())


async def test_rerank_sorted_sigmoid_scores(http, model_path):
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "France borders Spain."]
    reply = await http.post(
        "/openai/v1/rerank",
        json={"model": "rerank", "query": "capital of France", "documents": docs, "top_n": 2},
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-bert-reranker"))
    batch = tokenizer(
        ["capital of France"] * 3, docs, padding=True, truncation=True, return_tensors="np"
    )
    logits = batch["input_ids"].astype(np.float32).sum(axis=1) % 7 - 3
    want = sorted(range(3), key=lambda i: -logits[i])[:2]
    assert [r["index"] for r in results] == want
    assert results[0]["relevance_score"] == float(task_results.sigmoid(np.float64(logits[want[0]])))
    assert results[0]["document"]["text"] == docs[want[0]]


async def test_models_list(http):
    reply = await http.get("/openai/v1/models")
    assert reply.status_code == 200
    cards = {m["id"]: m for m in reply.json()["data"]}
    assert set(cards) == {"llm", "embed", "sentiment", "ner", "fill", "rerank"}
    assert cards["llm"]["task"] == "text_generation" and cards["llm"]["max_model_len"] == 64
