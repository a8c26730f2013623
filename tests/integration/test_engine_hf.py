"""The HF engine as real processes on free ports, called with `tritonclient.grpc`.

One engine process per tiny model (every task), started together. Results are
checked against transformers run directly in the test process.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch
import transformers
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import scrape, wait_until
from tests.helpers.triton import bool_input, bytes_input, clients, int_input, llm_inputs

ENGINES = {
    "llm": ("tiny-llama", "text_generation"),
    "t5": ("tiny-t5", "text2text_generation"),
    "fill": ("tiny-bert-fill-mask", "fill_mask"),
    "ner": ("tiny-bert-ner", "token_classification"),
    "sentiment": ("tiny-bert-sentiment", "sequence_classification"),
    "reranker": ("tiny-bert-reranker", "rerank"),
    "minilm": ("all-minilm-l6-v2", "text_embedding"),
}
TEXTS = ["Paris is a city in France.", "Alice met Bob in London on Tuesday."]


@pytest.fixture(scope="module")
def engines(model_path, tmp_path_factory):
    models = [model_entry(name, model_path(f), task) for name, (f, task) in ENGINES.items()]
    folder = tmp_path_factory.mktemp("mesh")
    with running_mesh(models, folder, engines_only=True, metrics=["llm"]) as mesh:
        yield {name: mesh.engine(name) for name in ENGINES}


@pytest.fixture(scope="module")
def client(engines):
    with clients(engines) as made:
        yield made


@pytest.fixture(scope="module")
def direct(model_path):
    cache = {}

    def get(model: str, auto_class: str):
        if model not in cache:
            path = model_path(model)
            loaded = (
                getattr(transformers, auto_class).from_pretrained(path, dtype=torch.float32).eval()
            )
            cache[model] = (loaded, transformers.AutoTokenizer.from_pretrained(path))
        return cache[model]

    return get


def _int_inputs(encoded) -> list[tgrpc.InferInput]:
    return [int_input(key, value.numpy()) for key, value in encoded.items()]


def test_live_ready_and_metadata(client):
    for name, c in client.items():
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
        assert not c.is_model_ready("nobody")
    llm = client["llm"].get_model_metadata("llm", as_json=True)
    assert {"text_input", "input_ids", "sampling_parameters", "stream"} <= {
        i["name"] for i in llm["inputs"]
    }
    fill = client["fill"].get_model_metadata("fill", as_json=True)
    assert {"input-0", "input_ids", "attention_mask"} <= {i["name"] for i in fill["inputs"]}
    assert (
        client["reranker"].get_model_metadata("reranker", as_json=True)["inputs"][0]["name"]
        == "query"
    )


def test_fill_mask_text_and_tensors(client, direct):
    model, tokenizer = direct("tiny-bert-fill-mask", "AutoModelForMaskedLM")
    texts = ["Paris is the [MASK] of France.", "Bob went to [MASK] today."]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**encoded).logits
    expected = [
        tokenizer.decode(
            logits[i, encoded["input_ids"][i] == tokenizer.mask_token_id].argmax(-1)
        ).encode()
        for i in range(2)
    ]
    text = client["fill"].infer("fill", [bytes_input("input-0", texts)])
    assert text.as_numpy("output-0").tolist() == expected
    tensors = client["fill"].infer("fill", _int_inputs(encoded))
    np.testing.assert_allclose(tensors.as_numpy("logits"), logits.numpy(), atol=1e-5, rtol=0)


def test_sequence_classification_text_probabilities_and_tensors(client, direct):
    model, tokenizer = direct("tiny-bert-sentiment", "AutoModelForSequenceClassification")
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**encoded).logits
    c = client["sentiment"]
    assert (
        c.infer("sentiment", [bytes_input("input-0", TEXTS)]).as_numpy("output-0").tolist()
        == logits.argmax(-1).tolist()
    )
    probs = c.infer(
        "sentiment", [bytes_input("input-0", TEXTS)], parameters={"return_probabilities": True}
    )
    np.testing.assert_allclose(
        probs.as_numpy("output-0"), torch.softmax(logits, -1).numpy(), atol=1e-6
    )
    tensors = c.infer("sentiment", _int_inputs(encoded))
    np.testing.assert_allclose(tensors.as_numpy("logits"), logits.numpy(), atol=1e-5, rtol=0)


def test_token_classification_text(client, direct):
    model, tokenizer = direct("tiny-bert-ner", "AutoModelForTokenClassification")
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        labels = model(**encoded).logits.argmax(-1)
    out = client["ner"].infer("ner", [bytes_input("input-0", TEXTS)]).as_numpy("output-0")
    assert out.shape == (2, 1, encoded["input_ids"].shape[1])
    assert out[:, 0].tolist() == labels.tolist()


def test_embedding_text(client, direct):
    model, tokenizer = direct("all-minilm-l6-v2", "AutoModel")
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    out = client["minilm"].infer("minilm", [bytes_input("input-0", TEXTS)]).as_numpy("output-0")
    assert out.dtype == np.float32 and out.shape == (2, 384)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rerank_text(client, direct):
    model, tokenizer = direct("tiny-bert-reranker", "AutoModelForSequenceClassification")
    query, docs = "where is paris", ["Paris is in France.", "Bananas are yellow."]
    encoded = tokenizer([query] * 2, docs, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**encoded).logits[:, 0].numpy()
    out = client["reranker"].infer(
        "reranker", [bytes_input("query", [query]), bytes_input("documents", docs)]
    )
    np.testing.assert_allclose(out.as_numpy("output-0"), expected, atol=1e-5)


@pytest.mark.parametrize(
    "name,model,auto_class",
    [("llm", "tiny-llama", "AutoModelForCausalLM"), ("t5", "tiny-t5", "AutoModelForSeq2SeqLM")],
)
def test_generation_unary_equals_greedy_generate(client, direct, name, model, auto_class):
    loaded, tokenizer = direct(model, auto_class)
    prompt = "Alice went to Paris and"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.generate(ids, do_sample=False, max_new_tokens=12)
    expected = (out[0, 1:] if loaded.config.is_encoder_decoder else out[0, ids.shape[1] :]).tolist()
    result = client[name].infer(name, llm_inputs(prompt, {"max_tokens": 12, "temperature": 0}))
    assert result.as_numpy("output_ids").tolist() == expected
    text = result.as_numpy("text_output")[0].decode()
    assert text == prompt + tokenizer.decode(expected, skip_special_tokens=True)
    assert result.as_numpy("num_output_tokens").tolist() == [len(expected)]


def _stream(
    c: tgrpc.InferenceServerClient,
    model: str,
    inputs,
    request_id: str,
    stop_after: int | None = None,
):
    responses: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        c.async_stream_infer(model, inputs, request_id=request_id)
        got = []
        while True:
            result, error = responses.get(timeout=60)
            if error is not None:
                raise error
            got.append(result)
            if stop_after is not None and len(got) >= stop_after:
                break
            if result.as_numpy("finish_reason") is not None:
                break
    finally:
        c.stop_stream(cancel_requests=stop_after is not None)
    return got


def test_streaming_generation_sends_deltas(client):
    sampling = {"max_tokens": 20, "temperature": 0, "ignore_eos": True}
    inputs = llm_inputs("Maria Garcia said", sampling)
    whole = client["llm"].infer("llm", [*inputs, bool_input("exclude_input_in_output", True)])
    parts = _stream(client["llm"], "llm", [*inputs, bool_input("stream", True)], "s1")
    assert len(parts) == 20
    assert (
        "".join(p.as_numpy("text_output")[0].decode() for p in parts)
        == whole.as_numpy("text_output")[0].decode()
    )
    assert [p.as_numpy("output_ids").tolist() for p in parts] == [
        [t] for t in whole.as_numpy("output_ids").tolist()
    ]
    assert parts[-1].as_numpy("finish_reason").tolist() == [b"length"]


def _metric(engines, name: str) -> float:
    samples = scrape(f"http://127.0.0.1:{engines['llm'].extra_ports['metrics']}/metrics")
    assert f'{name}{{model_name="llm"}}' in samples, f"{name} missing from /metrics"
    return samples[f'{name}{{model_name="llm"}}']


def test_cancelled_stream_stops_its_generation(client, engines):
    tokens_before = _metric(engines, "vllm:generation_tokens_total")
    inputs = llm_inputs("A", {"max_tokens": 480, "temperature": 0, "ignore_eos": True})
    _stream(client["llm"], "llm", [*inputs, bool_input("stream", True)], "cancel-me", stop_after=3)
    assert wait_until(lambda: _metric(engines, "vllm:num_requests_running") == 0, 30), (
        "the cancelled generation is still running"
    )
    assert _metric(engines, "vllm:generation_tokens_total") - tokens_before < 480
    assert _metric(engines, "vllm:time_to_first_token_seconds_count") >= 1


# -- bad requests: the right status, a message naming the problem, the engine still serving --------


def _raw_request(model: str, tensors: list[tuple[str, str, list[int], bytes]]):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def _ids(values: list[list[int]]) -> bytes:
    return np.asarray(values, dtype="<i8").tobytes()


def _text(value: bytes) -> bytes:
    return len(value).to_bytes(4, "little") + value


BAD_REQUESTS = [
    (
        "sentiment",
        [("input_ids", "INT64", [1, 4], _ids([[2, 5, 6]]))],
        "INVALID_ARGUMENT",
        "input_ids",
    ),
    (
        "sentiment",
        [("input_ids", "FP32", [1, 3], np.zeros(3, "<f4").tobytes())],
        "INVALID_ARGUMENT",
        "input_ids",
    ),
    (
        "sentiment",
        [("input-0", "BYTES", [1], (100).to_bytes(4, "little") + b"short")],
        "INVALID_ARGUMENT",
        "input-0",
    ),
    (
        "sentiment",
        [
            ("input_ids", "INT64", [1, 3], _ids([[2, 5, 3]])),
            ("attention_mask", "INT64", [1, 2], _ids([[1, 1]])),
        ],
        "INVALID_ARGUMENT",
        "attention_mask",
    ),
    (
        "sentiment",
        [
            ("input_ids", "INT64", [1, 3], _ids([[2, 5, 3]])),
            ("pixel_values", "INT64", [1, 3], _ids([[1, 1, 1]])),
        ],
        "INVALID_ARGUMENT",
        "pixel_values",
    ),
    (
        "sentiment",
        [("input_ids", "INT64", [1, 3], _ids([[2, 999999, 3]]))],
        "INVALID_ARGUMENT",
        "input_ids",
    ),
    ("nobody", [("input-0", "BYTES", [1], _text(b"hi"))], "NOT_FOUND", "nobody"),
    (
        "llm",
        [
            ("text_input", "BYTES", [1], _text(b"hi")),
            ("sampling_parameters", "BYTES", [1], _text(b"{oops")),
        ],
        "INVALID_ARGUMENT",
        "sampling_parameters",
    ),
    (
        "llm",
        [
            ("text_input", "BYTES", [1], _text(b"hi")),
            ("sampling_parameters", "BYTES", [1], _text(b'{"logit_bias": {"1": 2}}')),
        ],
        "INVALID_ARGUMENT",
        "logit_bias",
    ),
    (
        "llm",
        [
            ("text_input", "BYTES", [1], _text(b"hi")),
            ("sampling_parameters", "BYTES", [1], _text(b'{"max_tokens": 9000}')),
        ],
        "INVALID_ARGUMENT",
        "context length of 512",
    ),
]


@pytest.mark.parametrize("model,tensors,status,named", BAD_REQUESTS)
def test_bad_requests_are_rejected_and_the_engine_keeps_serving(
    engines, client, model, tensors, status, named
):
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    target = "llm" if model == "llm" else "sentiment"
    with grpc.insecure_channel(engines[target].address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_raw_request(model, tensors), timeout=30)
    assert caught.value.code().name == status
    assert named in caught.value.details()
    assert engines[target].alive() and client[target].is_server_ready()
    good = client["sentiment"].infer("sentiment", [bytes_input("input-0", TEXTS)])
    assert good.as_numpy("output-0").shape == (2,)


def test_unimplemented_and_unknown_through_tritonclient(client):
    with pytest.raises(InferenceServerException, match="unknown model"):
        client["fill"].infer("nobody", [bytes_input("input-0", ["x [MASK]"])])
    with pytest.raises(InferenceServerException, match="no mask token"):
        client["fill"].infer("fill", [bytes_input("input-0", ["nothing masked"])])
    assert client["fill"].is_server_ready()
