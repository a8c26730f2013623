"""The vLLM backend through the whole mesh, and run-time fallback to the HF engine.

One model ("llm", tiny-llama, float32) is planned on vLLM with the HF engine as
its fallback. Through the gateway with the `openai` SDK: completions, chat,
streaming, n=2, stop strings and logprobs on vLLM; greedy output identical on
both engines; killing the vLLM engine moves traffic to the HF engine with no
client-visible error, and restarting it brings traffic back. Which engine
served is read from each engine's `vllm:generation_tokens` counter.
"""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
import yaml

from tests.procs import free_port, start_service, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
PROMPT = "The quick brown fox"


def _vllm_args(model_dir: str, metrics_port: int) -> list[str]:
    return [
        "--model_dir", model_dir, "--model_name", "llm", "--host", "127.0.0.1", "--dtype", "float32",
        "--max_model_len", "512", "--metrics_port", str(metrics_port),
    ]


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    source = model_path("tiny-llama")
    ports = {name: free_port() for name in ("tokenizer", "vllm", "hf", "vllm_metrics", "hf_metrics")}
    model_list = tmp_path_factory.mktemp("mesh") / "mesh.yaml"
    model_list.write_text(yaml.safe_dump({"models": [{
        "name": "llm", "source": source, "task": "text_generation", "backend": "vllm",
        "fallback": "huggingface", "max_model_len": 512,
        "endpoints": {
            "tokenizer": [f"127.0.0.1:{ports['tokenizer']}"],
            "vllm": [f"127.0.0.1:{ports['vllm']}"],
            "huggingface": [f"127.0.0.1:{ports['hf']}"],
        },
    }]}))
    started = {}
    try:
        started["vllm"] = start_service(
            "services.engine_vllm", _vllm_args(source, ports["vllm_metrics"]),
            name="engine_vllm", port=ports["vllm"], env=VLLM_ENV, ready="none",
        )
        started["hf"] = start_service(
            "services.engine_hf",
            ["--model_dir", source, "--model_name", "llm", "--host", "127.0.0.1", "--max_model_len", "512",
             "--metrics_port", str(ports["hf_metrics"])],
            name="engine_hf", port=ports["hf"], ready="none",
        )
        started["tokenizer"] = start_service(
            "services.tokenizer", ["--model_list", str(model_list), "--host", "127.0.0.1"],
            name="tokenizer", port=ports["tokenizer"], ready="none",
        )
        for service in started.values():
            wait_ready(service, "grpc", timeout=400)
        started["gateway"] = start_service(
            "services.gateway", ["--model_list", str(model_list), "--host", "127.0.0.1"],
            name="gateway", ready="http", ready_timeout=60,
        )
        yield {"started": started, "ports": ports, "source": source}
    finally:
        for service in started.values():
            service.stop()


@pytest.fixture(scope="module")
def sdk(mesh):
    return openai.OpenAI(base_url=f"{mesh['started']['gateway'].url}/openai/v1", api_key="x", max_retries=0, timeout=120)


def generated_tokens(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r'^vllm:generation_tokens_total(\{[^}]*\})? ([0-9.e+]+)$', line)
        if match:
            total += float(match.group(2))
    return total


def served_by(mesh, call):
    """Run `call`; return (its result, which engine generated the tokens)."""
    ports = mesh["ports"]
    before = {name: _tokens_or_none(ports[f"{name}_metrics"]) for name in ("vllm", "hf")}
    result = call()
    after = {name: _tokens_or_none(ports[f"{name}_metrics"]) for name in ("vllm", "hf")}
    grew = [name for name in before if before[name] is not None and after[name] is not None and after[name] > before[name]]
    return result, grew


def _tokens_or_none(port: int) -> float | None:
    try:
        return generated_tokens(port)
    except httpx.HTTPError:
        return None


def test_openai_sdk_on_vllm(mesh, sdk):
    reply, engines = served_by(mesh, lambda: sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=8, temperature=0))
    assert engines == ["vllm"]
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"

    chat = sdk.chat.completions.create(model="llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0)
    stream = sdk.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1

    two = sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=6, n=2, temperature=1.0, seed=7)
    assert sorted(c.index for c in two.choices) == [0, 1]

    full = reply.choices[0].text
    stop_word = full.strip().split()[0] if full.strip() else None
    if stop_word:
        stopped = sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop_word])
        assert stop_word not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"

    with_logprobs = sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    assert len(with_logprobs.choices[0].logprobs.token_logprobs) == 4
    assert all(lp <= 0 for lp in with_logprobs.choices[0].logprobs.token_logprobs)


def test_fallback_parity_and_recovery(mesh, sdk):
    def complete():
        return sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text

    on_vllm, engines = served_by(mesh, complete)
    assert engines == ["vllm"]

    mesh["started"]["vllm"].kill()  # SIGKILL the engine's whole process group
    mesh["started"]["vllm"].process.wait(10)
    for _ in range(3):
        on_hf, engines = served_by(mesh, complete)
        assert engines == ["hf"]
        # Parity: float32 greedy output is token-identical on the two engines.
        assert on_hf == on_vllm

    ports = mesh["ports"]
    mesh["started"]["vllm"] = start_service(
        "services.engine_vllm", _vllm_args(mesh["source"], ports["vllm_metrics"]),
        name="engine_vllm", port=ports["vllm"], env=VLLM_ENV, ready_timeout=400,
    )
    deadline = time.monotonic() + 60
    while True:
        text, engines = served_by(mesh, complete)
        assert text == on_vllm
        if engines == ["vllm"]:
            break
        assert time.monotonic() < deadline, "traffic did not return to the restarted vLLM engine"
