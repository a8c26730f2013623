"""Tenants and budgets with real processes: a real Redis server, two gateway replicas sharing
it, the tokenizer service and an HF engine on tiny-llama, called with `httpx` and the `openai`
SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import httpx2
import openai
import pytest
import redis

from services.gateway.tenants import hash_key
from services.launcher.processes import start_service
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.redis_server import RedisServer

pytestmark = pytest.mark.slow  # a multi-process mesh

TENANTS = {
    # name: (models, tokens per minute)
    "shared": ("[llm]", 100),
    "stream": ("[llm]", 200),
    "cancel": ("[llm]", 300),
    "sdk": ("[llm]", 300),
    "other": ("[sentiment]", 0),
}
ESTIMATE = 30  # --output_token_estimate of both gateways


def key(tenant: str) -> str:
    return f"sk-{tenant}-Key"


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key(tenant)}"}


def chat(max_tokens: int, **extra: object) -> dict:
    return {
        "model": "llm",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        **extra,
    }


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenants")
    tenants = folder / "tenants.yaml"
    lines = ["tenants:"]
    for name, (models, tokens) in TENANTS.items():
        lines += [
            f"  - name: {name}",
            f'    keys: ["{hash_key(key(name))}"]',
            f"    models: {models}",
            f"    tokens_per_minute: {tokens}",
        ]
    tenants.write_text("\n".join(lines) + "\n")
    server = RedisServer(folder).start()
    models = [
        model_entry("llm", model_path("tiny-llama"), "text_generation", max_model_len=512),
        model_entry("sentiment", model_path("tiny-bert-sentiment"), "sequence_classification"),
    ]
    gateways = []
    try:
        with running_mesh(models, folder):
            args = [
                "--model_list",
                str(folder / "mesh.yaml"),
                "--host",
                "127.0.0.1",
                "--tenants_file",
                str(tenants),
                "--redis_url",
                server.url,
                "--output_token_estimate",
                str(ESTIMATE),
            ]
            for index in range(2):
                gateways.append(
                    start_service(
                        "services.gateway",
                        args,
                        name=f"gateway-{index}",
                        ready="http",
                        ready_timeout=120,
                        log_dir=folder,
                    )
                )
            yield {"gateways": [g.url for g in gateways], "redis": server}
            for g in gateways:
                g.stop()
    finally:
        for g in gateways:
            g.stop()
        server.stop()


def bucket(server: RedisServer, tenant: str) -> tuple[float, float]:
    """A tenant's token bucket as the gateways last wrote it: (level, Redis time written)."""
    client = redis.Redis(port=server.port)
    try:
        level, stamp = client.hmget(f"hfmesh:budget:{tenant}", ["t", "s"])
    finally:
        client.close()
    assert level is not None and stamp is not None, f"no bucket for {tenant}"
    return float(level), float(stamp)


def tokens_left(server: RedisServer, tenant: str) -> float:
    return bucket(server, tenant)[0]


async def test_two_replicas_share_one_token_budget(mesh):
    """5 concurrent requests, alternating between the replicas, against 100 tokens a minute:
    each reserves its prompt + 20 (its max_tokens is under the estimate, so a reservation
    bounds its usage); what the admitted ones use stays within the budget (plus what refilled
    meanwhile), and some are refused with 429 and the headers."""
    clients = [httpx.AsyncClient(base_url=url, timeout=120) for url in mesh["gateways"]]
    started = time.monotonic()
    try:
        replies = await asyncio.gather(
            *(
                clients[i % 2].post(
                    "/openai/v1/chat/completions", json=chat(20), headers=auth("shared")
                )
                for i in range(5)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    elapsed = time.monotonic() - started
    codes = sorted(r.status_code for r in replies)
    assert set(codes) == {200, 429}, [r.text for r in replies]
    used = sum(r.json()["usage"]["total_tokens"] for r in replies if r.status_code == 200)
    assert used <= 100 + elapsed * 100 / 60 + 1
    prompt = next(r.json()["usage"]["prompt_tokens"] for r in replies if r.status_code == 200)
    assert used + prompt + 20 > 100  # as many as fitted were admitted (no refusal too many)
    for reply in replies:
        assert reply.headers["x-ratelimit-limit-tokens"] == "100"
        assert "x-ratelimit-remaining-tokens" in reply.headers
        if reply.status_code == 429:
            assert int(reply.headers["retry-after"]) >= 1
            assert reply.json()["error"]["type"] == "rate_limit_error"


async def test_a_stream_settles_its_real_usage(mesh):
    """The stream reserves its prompt + 30 (the estimate) and generates 60: its settlement
    charges the 30 beyond the reservation, so the bucket ends at what the stream's usage chunk
    reports. Redis keeps each bucket's level with the time it was written; the refill between
    the two reads is computed from those times (200 tokens a minute)."""
    async with httpx.AsyncClient(base_url=mesh["gateways"][1], timeout=120) as client:
        body = chat(60, stream=True, stream_options={"include_usage": True}, ignore_eos=True)
        async with client.stream(
            "POST", "/openai/v1/chat/completions", json=body, headers=auth("stream")
        ) as reply:
            assert reply.status_code == 200
            assert reply.headers["x-ratelimit-limit-tokens"] == "200"
            reserved_level, reserved_at = bucket(mesh["redis"], "stream")
            text = "".join([chunk async for chunk in reply.aiter_text()])
    usage_line = next(line for line in text.splitlines() if '"usage":{' in line)
    usage = httpx.Response(200, content=usage_line.removeprefix("data: ")).json()["usage"]
    assert usage["completion_tokens"] == 60
    assert reserved_level == pytest.approx(200 - usage["prompt_tokens"] - ESTIMATE, abs=0.01)
    # the settlement follows the stream's last bytes by moments (the client has them first)
    deadline = time.monotonic() + 10
    while (settled := bucket(mesh["redis"], "stream"))[1] == reserved_at:
        assert time.monotonic() < deadline, "the stream's usage was never settled"
        await asyncio.sleep(0.02)
    settled_level, settled_at = settled
    refilled = (settled_at - reserved_at) * 200 / 60
    assert reserved_level + refilled < 200  # the bucket did not reach its cap meanwhile
    expected = reserved_level + refilled - (usage["completion_tokens"] - ESTIMATE)
    assert settled_level == pytest.approx(expected, abs=0.01)


async def test_a_cancelled_stream_releases_its_reservation(mesh):
    async with httpx.AsyncClient(base_url=mesh["gateways"][0], timeout=120) as client:
        body = chat(450, stream=True, ignore_eos=True)
        async with client.stream(
            "POST", "/openai/v1/chat/completions", json=body, headers=auth("cancel")
        ) as reply:
            assert reply.status_code == 200
            async for _ in reply.aiter_bytes():
                break  # generating: its reservation is taken
            taken = tokens_left(mesh["redis"], "cancel")
            assert taken <= 300 - ESTIMATE
        # the client went away mid-stream
    released = time.monotonic()
    while tokens_left(mesh["redis"], "cancel") < 299:
        # refill alone (5 tokens/s) would take seconds to give back 30+ tokens
        assert time.monotonic() - released < 2.5, tokens_left(mesh["redis"], "cancel")
        await asyncio.sleep(0.05)


def test_the_openai_sdk_sees_429_and_its_retry_honours_retry_after(mesh):
    url = f"{mesh['gateways'][0]}/openai/v1"
    with httpx.Client(base_url=mesh["gateways"][1], timeout=120) as client:
        for _ in range(20):  # spend the budget (on the other replica)
            reply = client.post("/openai/v1/chat/completions", json=chat(20), headers=auth("sdk"))
            if reply.status_code == 429:
                break
        assert reply.status_code == 429
    strict = openai.OpenAI(base_url=url, api_key=key("sdk"), max_retries=0, timeout=120)
    with pytest.raises(openai.RateLimitError) as refused:
        strict.chat.completions.create(**chat(20))
    headers = refused.value.response.headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-limit-tokens"] == "300"
    assert "x-ratelimit-reset-tokens" in headers and "x-ratelimit-remaining-tokens" in headers

    seen: list[tuple[int, float, str | None]] = []

    def record(response: httpx2.Response) -> None:
        seen.append((response.status_code, time.monotonic(), response.headers.get("retry-after")))

    patient = openai.OpenAI(
        base_url=url,
        api_key=key("sdk"),
        max_retries=3,
        timeout=120,
        http_client=httpx2.Client(event_hooks={"response": [record]}),
    )
    answer = patient.chat.completions.create(**chat(20))
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert seen[0][0] == 429 and seen[-1][0] == 200
    waited = seen[1][1] - seen[0][1]
    assert waited >= int(seen[0][2] or 0) - 0.05  # the SDK slept Retry-After before retrying


def test_keys_and_models_per_tenant(mesh):
    with httpx.Client(base_url=mesh["gateways"][0], timeout=120) as client:
        listed = client.get("/openai/v1/models", headers=auth("other")).json()
        assert [m["id"] for m in listed["data"]] == ["sentiment"]
        assert client.get("/v1/models", headers=auth("shared")).json() == {"models": ["llm"]}
        hidden = client.post("/openai/v1/chat/completions", json=chat(2), headers=auth("other"))
        assert hidden.status_code == 404
        assert "served models: sentiment)" in hidden.json()["error"]["message"]
        predict = {"instances": ["good"]}
        assert (
            client.post("/v1/models/sentiment:predict", json=predict, headers=auth("shared"))
        ).status_code == 404
        assert (
            client.post("/v1/models/sentiment:predict", json=predict, headers=auth("other"))
        ).status_code == 200
        wrong_case = {"Authorization": f"Bearer {key('other').upper()}"}
        v2 = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
        for headers in ({}, wrong_case, {"Authorization": "Bearer nope"}):
            for method, path, body in (
                ("POST", "/openai/v1/chat/completions", chat(2)),
                ("GET", "/openai/v1/models", None),
                ("POST", "/v1/models/sentiment:predict", predict),
                ("POST", "/v2/models/sentiment/infer", v2),
                ("GET", "/v2/models/sentiment", None),
            ):
                assert client.request(method, path, json=body, headers=headers).status_code == 401
        assert client.get("/v2/health/ready").status_code == 200
        metrics = client.get("/metrics").text
        assert 'hfmesh_gateway_tenant_prompt_tokens_total{tenant="other"}' in metrics
