"""A tokenizer that is down (restarting under the launcher) costs requests latency, not
failures: the gateway waits for one, bounded by `tokenizer_timeout`, then answers 503."""

from __future__ import annotations

import asyncio
import time

import httpx

from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import MODELS, serve_gateway

BODY = {"model": "llm", "prompt": "hello", "max_tokens": 3}


def _llm_plan(mesh):
    return mesh.plan(models={"llm": MODELS["llm"]})


async def test_a_request_waits_for_a_restarting_tokenizer(mesh):
    async with serve_gateway(GatewaySettings(), _llm_plan(mesh)) as (url, app):
        (tokenizer,) = app.state.gateway.routes.by_name["llm"].tokenizers
        tokenizer._set_serving(False)  # what its health watch sees while it restarts
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            request = asyncio.ensure_future(client.post("/openai/v1/completions", json=BODY))
            await asyncio.sleep(0.3)
            assert not request.done()
            tokenizer._set_serving(True)  # back: SERVING again
            reply = await asyncio.wait_for(request, 10)
        assert reply.status_code == 200, reply.text


async def test_no_tokenizer_within_its_timeout_is_503(mesh):
    settings = GatewaySettings(tokenizer_timeout=0.3)
    async with serve_gateway(settings, _llm_plan(mesh)) as (url, app):
        (tokenizer,) = app.state.gateway.routes.by_name["llm"].tokenizers
        tokenizer._set_serving(False)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started = time.monotonic()
            reply = await client.post("/openai/v1/completions", json=BODY)
            waited = time.monotonic() - started
        tokenizer._set_serving(True)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "no tokenizer is ready for model 'llm'" in reply.json()["error"]["message"]
    assert 0.3 <= waited < 5
