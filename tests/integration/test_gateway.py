"""The mesh as real processes: HF engines + tokenizer service + gateway, called with
the `openai` SDK and `httpx`; the tokenizer in KServe transformer mode; a client
disconnect stopping the engine's generation.

Expected values come from transformers run in this test process.
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest
import torch
import transformers

from services.common import task_results
from services.launcher.processes import start_service
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import scrape, total, wait_until
from tests.helpers.triton import bytes_input

pytestmark = pytest.mark.slow  # a multi-process mesh

# mesh name → (model folder, task)
ENGINES = {
    "llm": ("tiny-llama", "text_generation"),
    "embed": ("all-minilm-l6-v2", "text_embedding"),
    "fill": ("tiny-bert-fill-mask", "fill_mask"),
    "sentiment": ("tiny-bert-sentiment", "sequence_classification"),
    "rerank": ("tiny-bert-reranker", "rerank"),
}


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    models = [
        model_entry(name, model_path(folder), task, max_model_len=512 if name == "llm" else None)
        for name, (folder, task) in ENGINES.items()
    ]
    with running_mesh(models, tmp_path_factory.mktemp("mesh"), metrics=["llm"]) as started:
        transformer = start_service(
            "services.tokenizer",
            [
                "--model_dir",
                model_path("tiny-bert-sentiment"),
                "--model_name",
                "sentiment",
                "--host",
                "127.0.0.1",
                "--predictor_host",
                started.engine("sentiment").address,
                "--predictor_protocol",
                "grpc-v2",
            ],
            name="transformer",
        )
        try:
            yield {
                "gateway": started["gateway"],
                "llm": started.engine("llm"),
                "transformer": transformer,
            }
        finally:
            transformer.stop()


@pytest.fixture(scope="module")
def sdk(mesh):
    return openai.OpenAI(
        base_url=f"{mesh['gateway'].url}/openai/v1", api_key="unused", max_retries=0, timeout=120
    )


@pytest.fixture(scope="module")
def http(mesh):
    with httpx.Client(base_url=mesh["gateway"].url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(model_path):
    """transformers models and tokenizers, loaded once."""
    cache = {}

    def get(folder: str, cls=transformers.AutoModel):
        key = (folder, cls)
        if key not in cache:
            cache[key] = (
                cls.from_pretrained(model_path(folder)).eval(),
                transformers.AutoTokenizer.from_pretrained(model_path(folder)),
            )
        return cache[key]

    return get


def greedy(reference, prompt_ids: list[int], new_tokens: int) -> list[int]:
    model, _ = reference("tiny-llama", transformers.AutoModelForCausalLM)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


def test_completion_equals_greedy_generate(sdk, reference):
    _, tokenizer = reference("tiny-llama", transformers.AutoModelForCausalLM)
    reply = sdk.completions.create(
        model="llm", prompt="The quick brown fox", max_tokens=12, temperature=0
    )
    ids = tokenizer("The quick brown fox")["input_ids"]
    expected = greedy(reference, ids, 12)
    assert reply.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(expected)


def test_streamed_chat_joins_to_the_unstreamed_text(sdk):
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    whole = sdk.chat.completions.create(
        model="llm", messages=messages, max_tokens=24, temperature=0
    )
    stream = sdk.chat.completions.create(
        model="llm",
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_embeddings_float_and_base64(sdk, reference):
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    floats = sdk.embeddings.create(model="embed", input=texts, encoding_format="float")
    raw = sdk.embeddings.create(model="embed", input=texts, encoding_format="base64")
    decoded_by_sdk = sdk.embeddings.create(model="embed", input=texts)
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    from_base64 = np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
    )
    np.testing.assert_array_equal(from_base64, got)
    np.testing.assert_allclose(np.array([d.embedding for d in decoded_by_sdk.data]), got, atol=1e-7)
    model, tokenizer = reference("all-minilm-l6-v2")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    np.testing.assert_allclose(
        got, task_results.text_embedding(hidden, batch["attention_mask"].numpy()), atol=1e-5
    )
    assert abs(float(got[0] @ got[1]) - 0.755) < 0.01 and abs(float(got[0] @ got[2])) < 0.05
    assert floats.usage.prompt_tokens == int(batch["attention_mask"].sum())


def test_models_list_and_errors(sdk):
    assert {m.id for m in sdk.models.list().data} == set(ENGINES)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.completions.create(model="llm", prompt="hello", max_tokens=600)
    assert "512" in raised.value.message and "600" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="missing", prompt="hello")
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.completions.create(model="embed", prompt="hello")
    assert "text_embedding" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert "temperature" in raised.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="embed", input="")


def test_rerank(http, reference):
    model, tokenizer = reference(
        "tiny-bert-reranker", transformers.AutoModelForSequenceClassification
    )
    query, docs = (
        "capital of France",
        ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."],
    )
    reply = http.post(
        "/openai/v1/rerank", json={"model": "rerank", "query": query, "documents": docs}
    )
    assert reply.status_code == 200, reply.text
    with torch.no_grad():
        logits = (
            model(**tokenizer([query] * 3, docs, padding=True, return_tensors="pt"))
            .logits[:, 0]
            .numpy()
        )
    results = reply.json()["results"]
    assert [r["index"] for r in results] == list(np.argsort(-logits))
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results],
        task_results.sigmoid(np.sort(logits)[::-1]),
        atol=1e-5,
    )


def test_v1_predict_fill_mask_and_classification(http, reference):
    model, tokenizer = reference("tiny-bert-fill-mask", transformers.AutoModelForMaskedLM)
    texts = [f"the cat {tokenizer.mask_token} on the mat", f"paris is in {tokenizer.mask_token}"]
    reply = http.post("/v1/models/fill:predict", json={"instances": texts})
    assert reply.status_code == 200, reply.text
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    want = task_results.fill_mask(
        logits,
        batch["input_ids"].numpy(),
        mask_token_id=tokenizer.mask_token_id,
        decode=tokenizer.decode,
    )
    assert reply.json()["predictions"] == [w.decode() for w in want]
    model, tokenizer = reference(
        "tiny-bert-sentiment", transformers.AutoModelForSequenceClassification
    )
    texts = ["I loved it", "worst day ever", "meh"]
    reply = http.post("/v1/models/sentiment:predict", json={"instances": texts})
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    assert reply.json()["predictions"] == logits.argmax(axis=-1).tolist()


def test_v2_infer_text_and_tensors(http, reference):
    model, tokenizer = reference(
        "tiny-bert-sentiment", transformers.AutoModelForSequenceClassification
    )
    texts = ["good", "bad and sad"]
    body = {
        "inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts}],
        "parameters": {"return_probabilities": True},
    }
    reply = http.post("/v2/models/sentiment/infer", json=body, headers={"X-Request-Id": "v2-req-1"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "v2-req-1"
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    out = reply.json()["outputs"][0]
    assert out["shape"] == [2, 2]
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(2, 2), task_results.softmax(logits), atol=1e-5
    )
    tensors = {
        "inputs": [
            {
                "name": n,
                "shape": list(batch[n].shape),
                "datatype": "INT64",
                "data": batch[n].flatten().tolist(),
            }
            for n in ("input_ids", "attention_mask")
        ]
    }
    raw = http.post("/v2/models/sentiment/infer", json=tensors).json()["outputs"]
    np.testing.assert_allclose(np.array(raw[0]["data"]).reshape(2, -1), logits, atol=1e-5)
    assert http.get("/v2/health/ready").json() == {"ready": True}


def test_transformer_mode_fronts_the_engine_tensor_path(mesh, reference):
    import tritonclient.grpc as triton

    model, tokenizer = reference(
        "tiny-bert-sentiment", transformers.AutoModelForSequenceClassification
    )
    texts = ["what a film", "never again", "fine"]
    client = triton.InferenceServerClient(mesh["transformer"].address)
    reply = client.infer("sentiment", [bytes_input("input-0", texts)])
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    assert reply.as_numpy("output-0").tolist() == logits.argmax(axis=-1).tolist()
    client.close()


def _engine_metrics(mesh) -> dict[str, float]:
    samples = scrape(f"http://127.0.0.1:{mesh['llm'].extra_ports['metrics']}/metrics")
    names = ("vllm:num_requests_running", "vllm:generation_tokens_total")
    return {name: total(samples, name) for name in names}


def _wait_engine_idle(mesh, *, within: float) -> None:
    """From now (the client just left), the engine must run no request within `within` seconds."""

    def idle() -> bool:
        return _engine_metrics(mesh)["vllm:num_requests_running"] == 0

    assert wait_until(idle, within, interval=0.02), (
        f"the engine still generates {within} s after the client left"
    )


def test_client_disconnect_stops_generation_within_one_second(mesh):
    """Four sequences of 480 tokens take the engine seconds; leaving after three chunks must stop
    it."""
    before = _engine_metrics(mesh)["vllm:generation_tokens_total"]
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 480,
        "n": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(base_url=mesh["gateway"].url, timeout=60) as client:
        with client.stream("POST", "/openai/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            contents = 0
            for line in reply.iter_lines():
                if (
                    line.startswith("data: ")
                    and line != "data: [DONE]"
                    and json.loads(line[6:])["choices"][0]["delta"].get("content")
                ):
                    contents += 1
                    if contents == 3:
                        break
    _wait_engine_idle(mesh, within=1.0)
    generated = _engine_metrics(mesh)["vllm:generation_tokens_total"] - before
    assert 3 <= generated < 4 * 480 / 2, f"the engine generated {generated} of 1920 tokens"


def test_client_disconnect_stops_a_non_streamed_generation(mesh):
    """The same for a non-streamed answer: a client that gives up waiting stops the engine."""
    before = _engine_metrics(mesh)["vllm:generation_tokens_total"]
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 480,
        "n": 4,
        "temperature": 0,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=mesh["gateway"].url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/openai/v1/chat/completions", json=body)
    _wait_engine_idle(mesh, within=1.0)
    generated = _engine_metrics(mesh)["vllm:generation_tokens_total"] - before
    assert 0 < generated < 4 * 480 / 2, f"the engine generated {generated} of 1920 tokens"
