"""Deadlines end to end (X-Request-Timeout → gRPC deadline → engine abort → 504) and streams
that fail after their 200: an explicit error event, never a silent truncation."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from services.common.engine import Task
from services.gateway.settings import GatewaySettings, load_settings
from services.gateway.state import request_budget
from tests.fakes import FakeEngine, ready
from tests.helpers.metrics import poll
from tests.unit.gateway.conftest import MODELS, serve_gateway, start_engine

CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}


@pytest.fixture
async def slow(mesh):
    mesh.engine.token_delay = 0.08  # 40 tokens ≈ 3 s
    yield mesh
    mesh.engine.token_delay = 0.0


def test_budget_from_the_header_is_capped():
    settings = GatewaySettings(request_timeout=30, max_request_timeout=60)
    assert request_budget(None, settings) == 30
    assert request_budget("2.5", settings) == 2.5
    assert request_budget("9999", settings) == 60
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(Exception, match="X-Request-Timeout"):
            request_budget(bad, settings)


async def test_bad_timeout_header_is_400(http):
    reply = await http.post(
        "/openai/v1/chat/completions", json=CHAT, headers={"X-Request-Timeout": "soon"}
    )
    assert reply.status_code == 400 and "X-Request-Timeout" in reply.json()["error"]["message"]


async def test_deadline_mid_generation_is_504_and_the_engine_aborts(slow, http):
    reply = await http.post(
        "/openai/v1/chat/completions", json=CHAT, headers={"X-Request-Timeout": "0.5"}
    )
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["type"] == "timeout_error"
    assert await poll(lambda: not slow.engine.running, 3.0)
    assert slow.engine.aborted
    v2 = await http.post(
        "/v2/models/llm/infer",
        json={
            "inputs": [
                {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
                {
                    "name": "sampling_parameters",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ['{"max_tokens": 40}'],
                },
            ]
        },
        headers={"X-Request-Timeout": "0.5"},
    )
    assert v2.status_code == 504 and isinstance(v2.json()["error"], str)
    assert await poll(lambda: not slow.engine.running, 3.0)


async def test_deadline_mid_stream_ends_with_an_error_event(slow, http):
    async with http.stream(
        "POST",
        "/openai/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"X-Request-Timeout": "0.6"},
    ) as stream:
        assert stream.status_code == 200
        events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert error["code"] == 504 and error["type"] == "timeout_error"
    assert any('"content"' in e for e in events[:-2])  # some tokens came before
    assert await poll(lambda: not slow.engine.running, 3.0)


async def test_engine_lost_mid_stream_ends_with_an_error_event(mesh):
    engine = FakeEngine([ready("llm", Task.TEXT_GENERATION, 4096)], token_delay=0.05)
    runner = await start_engine(engine)
    address = f"127.0.0.1:{runner.bound_port}"
    plan = mesh.plan(engines={"huggingface": [address]}, models={"llm": MODELS["llm"]})
    async with serve_gateway(load_settings([], env={}), plan) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream(
                "POST", "/openai/v1/chat/completions", json={**CHAT, "stream": True}
            ) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                events = []
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                    if len(events) == 3:
                        break
                lost = time.monotonic()
                await runner.server.stop(0)
                async for line in lines:
                    if line.startswith("data: "):
                        events.append(line)
                ended = time.monotonic() - lost
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data: ") :])["error"]["code"] in (503, 500)
    assert ended < 5.0
