"""The mesh under load, faults and cancellations, as real processes: one model (tiny-llama)
on two HF engine replicas behind the tokenizer and the gateway, admission at 12 slots per
replica and no wait queue.

- overload at 2× capacity: the excess is refused with 503 + Retry-After, every admitted
  stream completes;
- a deadline that passes mid-generation: 504, and the engines' running gauges back to 0;
- SIGTERM to an engine with 20 streams in flight on it: health NOT_SERVING within 1 s, all
  20 finish, exit 0; SIGTERM to the gateway with 20 streams: all finish, exit 0;
- kill -9 of an engine mid-stream: its streams end with an error event, the other replica
  serves the next requests;
- 2,000 streams cancelled at random points: nothing left running or waiting anywhere,
  resident memory of the gateway and engines steady.

Times are measured and printed (bench/soak.py reports them too); the checks allow a loaded
machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import signal
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.converters import infer_request_to_pb
from services.common.engine import SamplingParams
from services.common.llm_tensors import generate_request
from services.common.pb import inference_pb2_grpc as pb_grpc
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import scrape, total, value, wait_until

pytestmark = pytest.mark.slow  # a multi-process mesh

PER_REPLICA = 12
ENV = {
    "HFMESH_MAX_IN_FLIGHT_PER_REPLICA": str(PER_REPLICA),
    "HFMESH_MAX_QUEUED_PER_REPLICA": "0",
    "HFMESH_DRAIN_GRACE": "120",
}
CHAT = {
    "model": "llm",
    "messages": [{"role": "user", "content": "Tell me a story."}],
    "ignore_eos": True,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    llm = dataclasses.replace(
        model_entry("llm", model_path("tiny-llama"), "text_generation", max_model_len=512),
        replicas=2,
    )
    folder = tmp_path_factory.mktemp("mesh")
    with running_mesh([llm], folder, metrics=["llm"], env=ENV) as started:
        yield started


def _engines(mesh):
    addresses = mesh.plan.endpoints["llm"].engines["huggingface"]
    return [next(s for s in mesh.services.values() if s.address == a) for a in addresses]


def _engine_name(mesh, engine) -> str:
    return next(name for name, s in mesh.services.items() if s is engine)


def _running(engine) -> float:
    samples = scrape(f"http://127.0.0.1:{engine.extra_ports['metrics']}/metrics")
    return total(samples, "vllm:num_requests_running") + total(samples, "vllm:num_requests_waiting")


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return -1
        return reply.status


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _wait_ready(mesh) -> None:
    gateway = mesh["gateway"].url

    def ready() -> bool:
        try:
            return httpx.get(f"{gateway}/v2/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(ready, 120), "the mesh is not ready"
    assert wait_until(lambda: all(_health(e.address) == 1 for e in _engines(mesh)), 120)

    def gateway_sees_every_engine() -> bool:  # its health watch of a restarted one resumes
        samples = scrape(f"{gateway}/metrics")
        serving = "hfmesh_gateway_replica_serving"
        return all(value(samples, serving, address=e.address) == 1 for e in _engines(mesh))

    assert wait_until(gateway_sees_every_engine, 30), "the gateway does not see every engine"
    for _ in range(4):  # warm: each engine's first batch is slow
        httpx.post(
            f"{gateway}/openai/v1/chat/completions", json={**CHAT, "max_tokens": 4}, timeout=120
        )


async def _stream(
    client: httpx.AsyncClient, max_tokens: int, out: dict | None = None, **extra
) -> dict:
    """One streamed chat read to its end: status, events, whether it ended with [DONE], the
    error event if any, and the time of its first token. `out`, when given, is filled as the
    stream goes, so that a test can watch it."""
    started = time.monotonic()
    out = {} if out is None else out
    out.update({"status": None, "done": False, "error": None, "ttft": None, "tokens": 0})
    body = {
        **CHAT,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    async with client.stream("POST", "/openai/v1/chat/completions", json=body) as reply:
        out["status"] = reply.status_code
        out["retry_after"] = reply.headers.get("retry-after")
        if reply.status_code != 200:
            out["body"] = json.loads(await reply.aread())
            return out
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                out["done"] = True
                continue
            event = json.loads(data)
            if "error" in event:
                out["error"] = event["error"]
                out["error_at"] = time.monotonic()
            elif event.get("usage"):
                out["tokens"] = event["usage"]["completion_tokens"]
            elif out["ttft"] is None and event["choices"][0]["delta"].get("content"):
                out["ttft"] = time.monotonic() - started
    return out


def test_overload_at_twice_capacity_refuses_the_excess_fast(mesh):
    _wait_ready(mesh)
    capacity = PER_REPLICA * 2

    async def run():
        async with httpx.AsyncClient(base_url=mesh["gateway"].url, timeout=120) as client:
            return await asyncio.gather(*(_stream(client, 48) for _ in range(2 * capacity)))

    results = asyncio.run(run())
    admitted = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 503]
    assert len(admitted) + len(refused) == len(results)
    assert len(admitted) >= capacity and refused, (len(admitted), len(refused))
    assert all(r["done"] and r["error"] is None and r["tokens"] == 48 for r in admitted)
    for r in refused:
        assert r["retry_after"] == "1"
        assert r["body"]["error"]["type"] == "service_unavailable_error"
    print(f"\noverload 2x: admitted {len(admitted)}, refused {len(refused)}")


def test_a_deadline_mid_generation_is_504_and_stops_the_engines(mesh):
    _wait_ready(mesh)
    url = f"{mesh['gateway'].url}/openai/v1/chat/completions"
    body = {**CHAT, "max_tokens": 450}
    # The budget is a quarter of the fastest of two whole answers on this machine now, so
    # that it expires mid-generation however fast or loaded the machine is.
    took = []
    for _ in range(2):
        started = time.monotonic()
        assert httpx.post(url, json=body, timeout=120).status_code == 200
        took.append(time.monotonic() - started)
    budget = max(0.15, min(took) / 4)
    started = time.monotonic()
    reply = httpx.post(url, json=body, headers={"X-Request-Timeout": f"{budget:.3f}"}, timeout=60)
    answered = time.monotonic()
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["type"] == "timeout_error"
    engines = _engines(mesh)
    busy_seen = []  # when a scrape still saw work: the last one bounds when it stopped

    def idle() -> bool:
        busy = sum(_running(e) for e in engines)
        if busy:
            busy_seen.append(time.monotonic() - answered)
        return busy == 0

    assert wait_until(idle, 10, interval=0.02)
    print(
        f"\ndeadline {budget:.2f} s: 504 after {answered - started:.2f} s; engines idle at the "
        f"scrape {time.monotonic() - answered:.2f} s after it (last busy scrape at "
        f"{busy_seen[-1] if busy_seen else 0:.2f} s)"
    )


async def _engine_stream(stub, tokens: int) -> list[str]:
    """A generation streamed straight from an engine: its responses' error messages."""
    request = generate_request(
        "llm",
        list(range(5, 25)),
        SamplingParams(max_tokens=tokens, ignore_eos=True),
        request_id="drain",
    )
    errors = []
    async for reply in stub.ModelStreamInfer(iter([infer_request_to_pb(request, raw=True)])):
        if reply.error_message:
            errors.append(reply.error_message)
    return errors


def test_sigterm_to_an_engine_with_20_streams_in_flight(mesh):
    _wait_ready(mesh)
    engine = _engines(mesh)[0]

    async def run():
        async with grpc.aio.insecure_channel(engine.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            tasks = [asyncio.ensure_future(_engine_stream(stub, 300)) for _ in range(20)]
            assert await asyncio.to_thread(wait_until, lambda: _running(engine) >= 20, 30, 0.02)
            stopped = time.monotonic()
            engine.process.send_signal(signal.SIGTERM)
            flipped = await asyncio.to_thread(
                wait_until, lambda: _health(engine.address) != 1, 5, 0.02
            )
            flip = time.monotonic() - stopped
            errors = await asyncio.gather(*tasks)
            return flipped, flip, errors

    flipped, flip, errors = asyncio.run(run())
    assert flipped and flip < 1.0, flip
    assert errors == [[]] * 20
    assert engine.process.wait(60) == 0
    print(f"\nSIGTERM engine: NOT_SERVING after {flip:.3f} s, 20/20 streams finished, exit 0")
    mesh.restart(_engine_name(mesh, engine))


def test_sigterm_to_the_gateway_with_20_streams_in_flight(mesh):
    _wait_ready(mesh)
    gateway = mesh["gateway"]

    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            # Long enough that the first streams are still running when the twentieth starts,
            # on a loaded 2-core machine too.
            tasks = [asyncio.ensure_future(_stream(client, 300)) for _ in range(20)]
            engines = _engines(mesh)
            running = await asyncio.to_thread(
                wait_until, lambda: sum(_running(e) for e in engines) >= 20, 30, 0.02
            )
            ended = [t.result() for t in tasks if t.done()]
            assert running, f"never 20 running; ended early: {ended}"
            stopped = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            not_ready = await asyncio.to_thread(wait_until, lambda: not ready(), 5, 0.02)
            flip = time.monotonic() - stopped
            return not_ready, flip, await asyncio.gather(*tasks)

    def ready() -> bool:
        try:
            reply = httpx.get(f"{gateway.url}/v2/health/ready", timeout=1)
        except httpx.HTTPError:
            return False  # the listener is closed: not ready either
        return reply.status_code == 200

    not_ready, flip, results = asyncio.run(run())
    assert not_ready and flip < 1.0, flip
    assert all(r["status"] == 200 and r["done"] and r["error"] is None for r in results)
    assert gateway.process.wait(60) == 0
    print(f"\nSIGTERM gateway: not ready after {flip:.3f} s, 20/20 streams finished, exit 0")
    mesh.restart("gateway")


def test_kill_9_of_an_engine_mid_stream(mesh):
    _wait_ready(mesh)
    victim, survivor = _engines(mesh)

    async def run():
        async with httpx.AsyncClient(base_url=mesh["gateway"].url, timeout=120) as client:
            states: list[dict] = [{} for _ in range(16)]
            tasks = [asyncio.ensure_future(_stream(client, 300, out)) for out in states]

            def mid_stream() -> bool:
                # Every stream has its first token: a kill now cuts the victim's streams
                # instead of letting the gateway retry them, unstarted, on the survivor.
                started = all(s.get("ttft") is not None for s in states)
                return started and _running(victim) >= 4 and _running(survivor) >= 4

            assert await asyncio.to_thread(wait_until, mid_stream, 30, 0.02), states
            killed = time.monotonic()
            victim.kill(signal.SIGKILL)
            results = await asyncio.gather(*tasks)
            after = [
                (
                    await client.post("/openai/v1/chat/completions", json={**CHAT, "max_tokens": 8})
                ).status_code
                for _ in range(10)
            ]
            return killed, results, after

    killed, results, after = asyncio.run(run())
    failed = [r for r in results if r["error"] is not None]
    finished = [r for r in results if r["error"] is None]
    assert failed and finished
    assert all(r["done"] and r["error"]["code"] in (503, 500) for r in failed)
    assert all(r["done"] and r["tokens"] == 300 for r in finished)
    slowest = max(r["error_at"] - killed for r in failed)
    assert slowest < 5.0, slowest
    assert after == [200] * 10
    print(f"\nkill -9: {len(failed)} streams ended with an error event within {slowest:.3f} s")
    mesh.restart(_engine_name(mesh, victim))


@pytest.mark.heavy
def test_2000_random_cancellations_leak_nothing(mesh):
    _wait_ready(mesh)
    gateway, engines = mesh["gateway"], _engines(mesh)
    rng = random.Random(16)
    outcomes: dict[str, int] = {}

    async def one(client: httpx.AsyncClient, gate: asyncio.Semaphore) -> None:
        async with gate:
            body = {**CHAT, "max_tokens": rng.randint(4, 96), "stream": rng.random() < 0.8}
            cancel_after = rng.uniform(0.0, 1.0)
            try:
                async with asyncio.timeout(cancel_after):
                    reply = await client.post("/openai/v1/chat/completions", json=body)
                key = str(reply.status_code)
            except TimeoutError:
                key = "cancelled"
            outcomes[key] = outcomes.get(key, 0) + 1

    async def run(count: int) -> None:
        gate = asyncio.Semaphore(2 * PER_REPLICA - 4)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            await asyncio.gather(*(one(client, gate) for _ in range(count)))

    asyncio.run(run(300))  # warm-up
    pids = [gateway.process.pid] + [e.process.pid for e in engines]
    before = [_rss_kib(pid) for pid in pids]
    outcomes.clear()
    asyncio.run(run(2000))

    def idle() -> bool:
        samples = scrape(f"{gateway.url}/metrics")
        admission = total(samples, "hfmesh_gateway_admission_slots_in_use") + total(
            samples, "hfmesh_gateway_admission_queued"
        )
        return admission == 0 and all(_running(e) == 0 for e in engines)

    assert wait_until(idle, 10, interval=0.05)
    after = [_rss_kib(pid) for pid in pids]
    growth = [(a - b) / b for a, b in zip(after, before, strict=True)]
    print(f"\n2,000 cancellations: {outcomes}; RSS growth {[f'{g:+.1%}' for g in growth]}")
    assert outcomes.get("cancelled", 0) > 500
    assert set(outcomes) <= {"cancelled", "200", "503"}
    assert all(g < 0.05 for g in growth), growth
