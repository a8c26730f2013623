"""The `make test-deploy` tier: real clients against the compose stack `scripts/test_deploy.sh`
built and brought up. Skipped unless that script set `HFMESH_DEPLOY_GATEWAY`.

Environment (set by the script): HFMESH_DEPLOY_GATEWAY (the gateway URL), HFMESH_DEPLOY_ENGINE
(podman or docker), HFMESH_DEPLOY_COMPOSE (the compose command with its `-f`),
HFMESH_DEPLOY_REGISTRY / HFMESH_DEPLOY_TAG (image names).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import httpx
import numpy as np
import pytest

GATEWAY = os.environ.get("HFMESH_DEPLOY_GATEWAY", "")
pytestmark = pytest.mark.skipif(not GATEWAY, reason="needs the stack of scripts/test_deploy.sh")
ENGINE = os.environ.get("HFMESH_DEPLOY_ENGINE", "podman")
COMPOSE = shlex.split(os.environ.get("HFMESH_DEPLOY_COMPOSE", "podman-compose"))
REGISTRY = os.environ.get("HFMESH_DEPLOY_REGISTRY", "localhost/hfmesh")
TAG = os.environ.get("HFMESH_DEPLOY_TAG", "latest")
PROJECT = "hfmesh"
STOPPED_ENGINE, STOPPED_MODEL = "hf-tiny-ner", "tiny-ner"
OTHER_MODEL = "tiny-sentiment"


def v2_infer(client: httpx.Client, model: str, texts: list[str]) -> httpx.Response:
    body = {
        "inputs": [{"name": "input-0", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }
    return client.post(f"/v2/models/{model}/infer", json=body)


def container_ip(service: str) -> str:
    labels = [
        f"label=com.docker.compose.project={PROJECT}",
        f"label=com.docker.compose.service={service}",
    ]
    ids = subprocess.run(
        [ENGINE, "ps", "-q", *(arg for label in labels for arg in ("--filter", label))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert ids, f"no running container for {service}"
    template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    out = subprocess.run(
        [ENGINE, "inspect", "--format", template, ids[0]],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[0]


@pytest.fixture(scope="module")
def client():
    with httpx.Client(base_url=GATEWAY, timeout=300) as http:
        yield http


def test_chat_answers_paris():
    import openai

    sdk = openai.OpenAI(base_url=f"{GATEWAY}/openai/v1", api_key="unused", timeout=300)
    reply = sdk.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content


def test_embeddings_are_384_unit_vectors():
    import openai

    sdk = openai.OpenAI(base_url=f"{GATEWAY}/openai/v1", api_key="unused", timeout=120)
    reply = sdk.embeddings.create(model="all-minilm-l6-v2", input=["A man is eating food."])
    vector = np.array(reply.data[0].embedding)
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-3


def test_v2_infer_on_an_encoder(client):
    reply = v2_infer(client, OTHER_MODEL, ["good", "bad and sad"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["shape"][0] == 2


def test_tritonclient_calls_an_engine_container_directly():
    import tritonclient.grpc as triton

    engine = triton.InferenceServerClient(f"{container_ip('hf-' + OTHER_MODEL)}:8081")
    assert engine.is_model_ready(OTHER_MODEL)
    text = triton.InferInput("input-0", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"what a wonderful day"], dtype=object))
    result = engine.infer(OTHER_MODEL, [text], client_timeout=60)
    assert result.as_numpy("output-0").shape[0] == 1


def test_a_stopped_engine_answers_503_while_others_answer_then_recovers(client):
    subprocess.run([*COMPOSE, "stop", STOPPED_ENGINE], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            reply = v2_infer(client, STOPPED_MODEL, ["Alice lives in Paris"])
            if reply.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert reply.status_code == 503, reply.text
        assert int(reply.headers["retry-after"]) >= 1
        assert v2_infer(client, OTHER_MODEL, ["good"]).status_code == 200
    finally:
        subprocess.run([*COMPOSE, "start", STOPPED_ENGINE], check=True, capture_output=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        reply = v2_infer(client, STOPPED_MODEL, ["Alice lives in Paris"])
        if reply.status_code == 200:
            break
        time.sleep(2)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("image", ["gateway", "tokenizer"])
def test_torch_free_images_cannot_import_torch(image):
    result = subprocess.run(
        [
            ENGINE,
            "run",
            "--rm",
            "--entrypoint",
            "python",
            f"{REGISTRY}/{image}:{TAG}",
            "-c",
            "import torch",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "No module named 'torch'" in result.stderr
