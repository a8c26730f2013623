"""The vLLM backend through the whole mesh, and run-time fallback to the HF engine.

One model ("llm", tiny-llama, float32) is planned on vLLM with the HF engine as
its fallback. Through the gateway with the `openai` SDK: completions, chat,
streaming, n=2, stop strings and logprobs on vLLM; greedy output identical on
both engines; killing the vLLM engine mid-stream ends its open streams with an error
event within 2 s and moves the next requests to the HF engine with no client-visible
error, and restarting it brings traffic back. Which engine served is read from each
engine's `vllm:generation_tokens` counter. The vLLM engine exports its request spans
(with vLLM's own queue time) to a real OTLP receiver.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import scrape, total, wait_until
from tests.helpers.otlp import OtlpReceiver

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
PROMPT = "The quick brown fox"
MID_STREAM_TOKENS = 480


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory, receiver):
    llm = model_entry(
        "llm",
        model_path("tiny-llama"),
        "text_generation",
        "vllm",
        fallback="huggingface",
        max_model_len=512,
        engine_args=["--dtype", "float32"],
    )
    folder = tmp_path_factory.mktemp("mesh")
    env = {
        **VLLM_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with running_mesh([llm], folder, metrics=["llm"], env=env, timeout=400) as started:
        yield started


@pytest.fixture(scope="module")
def sdk(mesh):
    url = f"{mesh['gateway'].url}/openai/v1"
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


def served_by(mesh, call):
    """Run `call`; return (its result, which engine generated the tokens)."""
    engines = {"vllm": mesh.engine("llm", "vllm"), "hf": mesh.engine("llm", "huggingface")}
    before = {name: _tokens_or_none(engine) for name, engine in engines.items()}
    result = call()
    after = {name: _tokens_or_none(engine) for name, engine in engines.items()}
    grew = [
        name
        for name in before
        if before[name] is not None and after[name] is not None and after[name] > before[name]
    ]
    return result, grew


def _stream_to_end(gateway: str, started: threading.Event) -> dict:
    """A long streamed completion read to its end: its error event, whether [DONE] came, the
    tokens it reported, and when it ended. `started` is set at its first token."""
    body = {
        "model": "llm",
        "prompt": PROMPT,
        "max_tokens": MID_STREAM_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out: dict = {"error": None, "done": False, "tokens": 0}
    with httpx.stream("POST", f"{gateway}/openai/v1/completions", json=body, timeout=120) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                out["error"] = event["error"]
            elif event.get("usage"):
                out["tokens"] = event["usage"]["completion_tokens"]
            else:
                started.set()
    out["ended"] = time.monotonic()
    return out


def _tokens_or_none(engine) -> float | None:
    try:
        samples = scrape(f"http://127.0.0.1:{engine.extra_ports['metrics']}/metrics")
    except httpx.HTTPError:
        return None
    return total(samples, "vllm:generation_tokens_total")


def test_openai_sdk_on_vllm(mesh, sdk):
    reply, engines = served_by(
        mesh,
        lambda: sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=8, temperature=0),
    )
    assert engines == ["vllm"]
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"

    chat = sdk.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    stream = sdk.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1

    two = sdk.completions.create(
        model="llm", prompt=PROMPT, max_tokens=6, n=2, temperature=1.0, seed=7
    )
    assert sorted(c.index for c in two.choices) == [0, 1]

    full = reply.choices[0].text
    stop_word = full.strip().split()[0] if full.strip() else None
    if stop_word:
        stopped = sdk.completions.create(
            model="llm", prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop_word]
        )
        assert (
            stop_word not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
        )

    with_logprobs = sdk.completions.create(
        model="llm", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    assert len(with_logprobs.choices[0].logprobs.token_logprobs) == 4
    assert all(lp <= 0 for lp in with_logprobs.choices[0].logprobs.token_logprobs)


def test_the_vllm_engine_traces_each_request_with_its_queue_time(mesh, receiver):
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    body = {"model": "llm", "prompt": PROMPT, "max_tokens": 5, "temperature": 0}
    reply = httpx.post(
        f"{mesh['gateway'].url}/openai/v1/completions",
        json=body,
        headers={"traceparent": traceparent},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text

    def engine_span(spans) -> bool:
        return any(s.service == "hfmesh-engine-vllm" and s.name == "generate llm" for s in spans)

    spans = receiver.wait_for(engine_span, trace_id)
    (generate,) = [
        s for s in spans if s.service == "hfmesh-engine-vllm" and s.name == "generate llm"
    ]
    assert not generate.error
    assert generate.events[0] == "first_token" and generate.events[-1] == "finish"
    assert generate.attributes["gen_ai.usage.output_tokens"] == 5
    queued = generate.attributes["hfmesh.queue_time_s"]
    assert 0 <= queued <= generate.attributes["gen_ai.server.time_to_first_token"]


def test_fallback_parity_and_recovery(mesh, sdk):
    def complete():
        return (
            sdk.completions.create(model="llm", prompt=PROMPT, max_tokens=16, temperature=0)
            .choices[0]
            .text
        )

    on_vllm, engines = served_by(mesh, complete)
    assert engines == ["vllm"]

    vllm = mesh.engine("llm", "vllm")
    # Killed while streams run: a stream cut by the kill ends with an explicit error event
    # (and [DONE]) within 2 s, never silently short; one that had not started may be retried
    # on the fallback and complete; then the fallback serves the next requests.
    started = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(_stream_to_end, mesh["gateway"].url, started) for _ in range(4)]
        assert started.wait(60), "no stream started"
        killed = time.monotonic()
        vllm.kill()  # SIGKILL the engine's whole process group
        ends = [s.result(timeout=180) for s in streams]
    vllm.process.wait(10)
    print(f"\nstreams ended {[round(end['ended'] - killed, 2) for end in ends]} s after the kill")
    assert all(end["done"] for end in ends), ends
    # Whether the kill lands mid-generation depends on the machine's speed (a quick one may
    # have generated a stream whole before its first bytes reach the client); whichever it
    # was, no stream is silently short. test_reliability.py cuts streams for certain.
    cut = [end for end in ends if end["error"] is not None]
    print(f"{len(cut)} of 4 streams cut by the kill")
    assert all(end["ended"] - killed < 2.0 for end in cut), [e["ended"] - killed for e in cut]
    assert all(end["tokens"] == MID_STREAM_TOKENS for end in ends if end["error"] is None)
    for _ in range(3):
        on_hf, engines = served_by(mesh, complete)
        assert engines == ["hf"]
        # Parity: float32 greedy output is token-identical on the two engines.
        assert on_hf == on_vllm

    mesh.restart(vllm.name, timeout=400)

    def back_on_vllm() -> bool:
        text, engines = served_by(mesh, complete)
        assert text == on_vllm
        return engines == ["vllm"]

    assert wait_until(back_on_vllm, 60), "traffic did not return to the restarted vLLM engine"
