"""Admission control at the gateway: per-model slots (n counts), a bounded FIFO queue with a
maximum wait, 503 + Retry-After when over, and a cancelled waiter leaves the queue at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.gateway.grpc_clients import CallContext
from services.gateway.settings import load_settings
from services.gateway.streaming import LastChunk
from tests.helpers.metrics import poll
from tests.unit.gateway.conftest import serve_gateway


def _chat(**fields):
    return {
        "model": "llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        **fields,
    }


@pytest.fixture
async def slow(mesh):
    mesh.engine.token_delay = 0.05  # 20 tokens ≈ 1 s per request
    yield mesh
    mesh.engine.token_delay = 0.0


async def test_over_capacity_is_503_with_retry_after_and_the_queue_drains(slow):
    settings = load_settings(
        ["--max_in_flight_per_replica=2", "--max_queued_per_replica=1", "--max_queue_wait=30"],
        env={},
    )
    async with serve_gateway(settings, slow.plan()) as (url, app):
        gate = app.state.gateway.admission.gate("llm")
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            # n=2 takes both slots of the one replica
            first = asyncio.ensure_future(
                client.post("/openai/v1/chat/completions", json=_chat(n=2))
            )
            assert await poll(lambda: gate.in_use == 2)
            queued = asyncio.ensure_future(client.post("/openai/v1/chat/completions", json=_chat()))
            assert await poll(lambda: len(gate.queue) == 1)
            refused = await client.post("/openai/v1/chat/completions", json=_chat())
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["type"] == "service_unavailable_error" and "capacity" in error["message"]
            v1 = await client.post("/v1/models/llm:predict", json={"instances": ["a"]})
            assert v1.status_code == 503 and isinstance(v1.json()["error"], str)
            metrics = (await client.get("/metrics")).text
            assert 'hfmesh_gateway_admission_refused_total{model="llm"} 2.0' in metrics
            assert 'hfmesh_gateway_admission_queued{model="llm"} 1.0' in metrics
            # how long each refusal took inside the gateway, by route family
            for family in ("openai", "v1"):
                count = (
                    f'hfmesh_gateway_response_start_seconds_count{{family="{family}",status="503"}}'
                )
                assert f"{count} 1.0" in metrics
            assert (await first).status_code == 200
            assert (await queued).status_code == 200
        assert gate.in_use == 0 and not gate.queue


async def test_a_wait_past_max_queue_wait_is_503(slow):
    settings = load_settings(
        ["--max_in_flight_per_replica=1", "--max_queued_per_replica=4", "--max_queue_wait=0.2"],
        env={},
    )
    async with serve_gateway(settings, slow.plan()) as (url, app):
        gate = app.state.gateway.admission.gate("llm")
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            running = asyncio.ensure_future(
                client.post(
                    "/openai/v1/completions", json={"model": "llm", "prompt": "x", "max_tokens": 20}
                )
            )
            assert await poll(lambda: gate.in_use == 1)
            late = await client.post("/openai/v1/chat/completions", json=_chat(stream=True))
            assert late.status_code == 503 and "within 0.2 s" in late.json()["error"]["message"]
            assert (await running).status_code == 200
        assert gate.in_use == 0 and not gate.queue


async def test_a_cancelled_waiter_leaves_the_queue_and_a_stream_holds_its_slot(slow):
    settings = load_settings(["--max_in_flight_per_replica=1", "--max_queue_wait=30"], env={})
    async with serve_gateway(settings, slow.plan()) as (url, app):
        gate = app.state.gateway.admission.gate("llm")
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream(
                "POST", "/openai/v1/chat/completions", json=_chat(stream=True)
            ) as stream:
                assert stream.status_code == 200
                assert gate.in_use == 1  # held while the stream is open
                waiting = asyncio.ensure_future(
                    client.post("/openai/v1/chat/completions", json=_chat())
                )
                assert await poll(lambda: len(gate.queue) == 1)
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                assert await poll(lambda: not gate.queue, 3.0)
                body = b"".join([chunk async for chunk in stream.aiter_bytes()])
                assert body.endswith(b"data: [DONE]\n\n")
            assert await poll(lambda: gate.in_use == 0, 3.0)
            # the freed slot serves the next request at once
            assert (
                await client.post("/openai/v1/chat/completions", json=_chat())
            ).status_code == 200


async def test_a_stream_frees_its_slot_with_its_last_chunk(mesh):
    """A client that asks again as soon as it reads `[DONE]` finds the slot free, though the
    stream's bookkeeping after its last event has not finished."""
    settings = load_settings(
        ["--max_in_flight_per_replica=1", "--max_queued_per_replica=0"], env={}
    )
    async with serve_gateway(settings, mesh.plan()) as (_, app):
        admission = app.state.gateway.admission
        gate = admission.gate("llm")
        bookkeeping = asyncio.Event()

        async def answer():
            yield b"data: {}\n\n"
            yield LastChunk(b"data: [DONE]\n\n")
            await bookkeeping.wait()

        async def work():
            return answer()

        call = CallContext(request_id="r", deadline=time.monotonic() + 30)
        stream = await admission.run("llm", 1, call, work)
        assert await anext(stream) == b"data: {}\n\n" and gate.in_use == 1
        assert isinstance(await anext(stream), LastChunk) and gate.in_use == 0
        rest = asyncio.ensure_future(anext(stream, None))
        await asyncio.sleep(0.05)
        assert not rest.done() and gate.in_use == 0
        bookkeeping.set()
        assert await rest is None and gate.in_use == 0  # freed once, not twice

        cut = await admission.run("llm", 1, call, work)  # a stream cut before its end
        await anext(cut)
        await cut.aclose()
        assert gate.in_use == 0


async def test_admission_off_and_unknown_models(mesh):
    settings = load_settings(["--max_in_flight_per_replica=0"], env={})
    async with serve_gateway(settings, mesh.plan()) as (url, app):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            ok = await client.post("/openai/v1/chat/completions", json=_chat(max_tokens=2))
            assert ok.status_code == 200
            missing = await client.post("/openai/v1/chat/completions", json=_chat(model="nope"))
            assert missing.status_code == 404
        assert not app.state.gateway.admission.gates
