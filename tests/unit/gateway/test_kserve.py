"""KServe V1 and V2 REST routes over the split path (tokenizer → fake engine → tokenizer)."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from services.common import task_results


def bert(model_path, folder: str, texts: list[str]):
    tokenizer = AutoTokenizer.from_pretrained(model_path(folder))
    return tokenizer, tokenizer(texts, padding=True, truncation=True, return_tensors="np")


async def test_v1_models_and_status(http):
    assert set((await http.get("/v1/models")).json()["models"]) == {
        "llm",
        "embed",
        "sentiment",
        "ner",
        "fill",
        "rerank",
    }
    assert (await http.get("/v1/models/ner")).json() == {"name": "ner", "ready": True}


async def test_v1_sequence_classification(http, model_path):
    texts = ["I love this", "terrible", "fine I guess"]
    _, batch = bert(model_path, "tiny-bert-sentiment", texts)
    ids = batch["input_ids"].astype(np.float32)
    logits = np.stack([ids.sum(axis=1) % 5, (ids.sum(axis=1) + 2) % 5], axis=-1)
    reply = await http.post("/v1/models/sentiment:predict", json={"instances": texts})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == task_results.sequence_classification(logits).tolist()
    probs = await http.post(
        "/v1/models/sentiment:predict",
        json={"instances": texts, "parameters": {"return_probabilities": True}},
    )
    got = probs.json()["predictions"]
    np.testing.assert_allclose(
        [[p["0"], p["1"]] for p in got], task_results.softmax(logits), rtol=1e-6
    )


async def test_v1_fill_mask_and_token_classification(http, model_path):
    tokenizer, _ = bert(model_path, "tiny-bert-fill-mask", ["x"])
    reply = await http.post(
        "/v1/models/fill:predict",
        json={"instances": [f"the {tokenizer.mask_token} sat", f"a {tokenizer.mask_token}"]},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == [tokenizer.decode([40])] * 2
    no_mask = await http.post("/v1/models/fill:predict", json={"instances": ["no mask here"]})
    assert no_mask.status_code == 400 and "mask" in no_mask.json()["error"]
    _, batch = bert(model_path, "tiny-bert-ner", ["John lives in Paris"])
    ner = await http.post("/v1/models/ner:predict", json={"instances": ["John lives in Paris"]})
    ids = batch["input_ids"].astype(np.float32)
    want = task_results.token_classification(np.stack([(ids + c) % 3 for c in range(3)], axis=-1))
    assert ner.json()["predictions"] == want.tolist()


async def test_v1_generation(http, mesh):
    reply = await http.post(
        "/v1/models/llm:predict", json={"instances": ["Hello"], "parameters": {"max_tokens": 3}}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0].count(" w") == 3
    assert mesh.engine.requests[-1].sampling.temperature == 0.0
    bad = await http.post(
        "/v1/models/llm:predict", json={"instances": ["Hello"], "parameters": {"temperature": 9}}
    )
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]


async def test_v2_text_and_tensor_paths(http, model_path):
    texts = ["good", "bad movie"]
    body = {
        "id": "r1",
        "inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts}],
    }
    reply = await http.post("/v2/models/sentiment/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    _, batch = bert(model_path, "tiny-bert-sentiment", texts)
    ids = batch["input_ids"].astype(np.float32)
    want = task_results.sequence_classification(
        np.stack([ids.sum(axis=1) % 5, (ids.sum(axis=1) + 2) % 5], axis=-1)
    )
    assert out["id"] == "r1" and out["model_name"] == "sentiment"
    assert out["outputs"] == [
        {"name": "output-0", "shape": [2], "datatype": "INT64", "data": want.tolist()}
    ]
    tensors = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [[2, 50, 3]]},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
        ]
    }
    raw = await http.post("/v2/models/sentiment/infer", json=tensors)
    assert raw.status_code == 200, raw.text
    logits = raw.json()["outputs"][0]
    assert logits["name"] == "logits" and logits["shape"] == [1, 2] and logits["data"] == [0.0, 2.0]


async def test_v2_rerank_and_generation_passthrough(http):
    body = {
        "inputs": [
            {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["q"]},
            {"name": "documents", "shape": [2], "datatype": "BYTES", "data": ["a", "b c"]},
        ]
    }
    reply = await http.post("/v2/models/rerank/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert (
        reply.json()["outputs"][0]["shape"] == [2]
        and reply.json()["outputs"][0]["datatype"] == "FP32"
    )
    llm = {
        "inputs": [
            {"name": "input_ids", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
            {
                "name": "sampling_parameters",
                "shape": [1],
                "datatype": "BYTES",
                "data": ['{"max_tokens": 2}'],
            },
        ]
    }
    generated = await http.post("/v2/models/llm/infer", json=llm)
    assert generated.status_code == 200, generated.text
    outputs = {o["name"]: o for o in generated.json()["outputs"]}
    assert outputs["output_ids"]["data"] == [9, 10] and outputs["finish_reason"]["data"] == [
        "length"
    ]


async def test_v2_health_metadata_and_ready(http):
    assert (await http.get("/v2/health/live")).json() == {"live": True}
    assert (await http.get("/v2/health/ready")).json() == {"ready": True}
    assert (await http.get("/v2")).json()["name"] == "hfmesh-gateway"
    assert (await http.get("/v2/models/ner/ready")).json() == {"name": "ner", "ready": True}
    assert (await http.get("/v2/models/ner")).json()["name"] == "ner"
    assert (await http.get("/v2/models/nope/ready")).status_code == 404


async def test_kserve_bodies_are_json_whatever_the_content_type(http):
    form = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d @file.json` sends
    reply = await http.post(
        "/v1/models/sentiment:predict", content=b'{"instances": ["fine"]}', headers=form
    )
    assert reply.status_code == 200 and len(reply.json()["predictions"]) == 1
    broken = await http.post(
        "/v1/models/sentiment:predict", content=b'{"instances": [', headers=form
    )
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]
    missing = await http.post(
        "/v2/models/sentiment/infer", json={"inputs": [{"name": "x", "shape": [1]}]}
    )
    assert missing.status_code == 400 and "datatype" in missing.json()["error"]


async def test_v2_boolean_parameters_mean_what_they_say(http):
    def body(flag: object) -> dict:
        texts = ["good", "bad movie"]
        inputs = [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": texts}]
        return {"inputs": inputs, "parameters": {"return_probabilities": flag}}

    for false in ("false", "False", "0", False, 0):
        reply = await http.post("/v2/models/sentiment/infer", json=body(false))
        assert reply.status_code == 200, reply.text
        # class ids, not probabilities
        assert reply.json()["outputs"][0]["datatype"] == "INT64", false
    for true in ("true", "1", True):
        reply = await http.post("/v2/models/sentiment/infer", json=body(true))
        output = reply.json()["outputs"][0]
        assert output["datatype"] == "FP32" and output["shape"] == [2, 2]
    bad = await http.post("/v2/models/sentiment/infer", json=body("maybe"))
    assert bad.status_code == 400 and "return_probabilities" in bad.json()["error"]
