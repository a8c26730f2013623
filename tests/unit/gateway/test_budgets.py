"""The budget buckets on both stores (memory, and a real Redis server shared by two clients as
two gateway replicas share it), and the failure policy when Redis goes away."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import ResourceExhausted, Unavailable
from services.gateway.budgets import (
    BudgetStoreUnavailable,
    Limits,
    MemoryBudgetStore,
    RedisBudgetStore,
)
from services.gateway.quota import Budgets, Quota, TenantMetrics, duration
from services.gateway.settings import load_settings
from services.gateway.tenants import Tenant
from tests.helpers.redis_server import RedisServer

TOKENS = Limits(requests_per_minute=0, tokens_per_minute=100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def store(request, redis_server):
    if request.param == "memory":
        yield MemoryBudgetStore()
        return
    store = RedisBudgetStore(redis_server.url, prefix=f"test:{id(request)}", timeout=2)
    yield store
    await store.close()


def _tenant(name: str = "t") -> str:
    return f"{name}-{asyncio.get_running_loop().time()}"


async def test_reserve_until_refused_then_give_back(store):
    tenant = _tenant()
    first = await store.reserve(tenant, TOKENS, 60)
    assert first.admitted and 39 <= first.remaining_tokens <= 41
    assert 35 <= first.reset_tokens <= 37  # 60 tokens refill at 100 per minute
    refused = await store.reserve(tenant, TOKENS, 60)
    assert not refused.admitted and refused.reason == "tokens" and refused.fits
    assert 11 <= refused.retry_after <= 13  # 20 missing tokens at 100/min
    assert 39 <= refused.remaining_tokens <= 42  # a refusal takes nothing
    back = await store.adjust(tenant, TOKENS, 50)  # the first used 10 of its 60
    assert 89 <= back.remaining_tokens <= 92
    assert (await store.reserve(tenant, TOKENS, 60)).admitted


async def test_settling_more_than_reserved_is_debt_and_the_bucket_caps(store):
    tenant = _tenant()
    await store.reserve(tenant, TOKENS, 90)
    debt = await store.adjust(tenant, TOKENS, -30)  # used 30 beyond its reservation
    assert debt.remaining_tokens < 0
    assert not (await store.reserve(tenant, TOKENS, 1)).admitted
    full = await store.adjust(tenant, TOKENS, 1000)
    assert full.remaining_tokens == 100 and full.reset_tokens == 0


async def test_a_request_larger_than_the_budget_never_fits(store):
    refused = await store.reserve(_tenant(), TOKENS, 101)
    assert not refused.admitted and not refused.fits and refused.remaining_tokens == 100


async def test_requests_budget(store):
    tenant = _tenant()
    limits = Limits(requests_per_minute=2, tokens_per_minute=0)
    assert (await store.reserve(tenant, limits, 10_000)).admitted
    assert (await store.reserve(tenant, limits, 10_000)).admitted
    refused = await store.reserve(tenant, limits, 1)
    assert not refused.admitted and refused.reason == "requests"
    assert 25 <= refused.retry_after <= 30  # one request refills in 30 s


async def test_memory_buckets_refill_with_time():
    clock = Clock()
    store = MemoryBudgetStore(clock)
    await store.reserve("t", TOKENS, 100)
    assert not (await store.reserve("t", TOKENS, 50)).admitted
    clock.now += 30  # half a minute: half the budget back
    assert (await store.reserve("t", TOKENS, 50)).admitted
    clock.now += 600
    assert (await store.adjust("t", TOKENS, 0)).remaining_tokens == 100


async def test_two_redis_clients_share_one_budget_atomically(redis_server):
    """Two replicas' stores, 20 concurrent reservations of 30 against 100: exactly 3 fit."""
    stores = [RedisBudgetStore(redis_server.url, prefix="shared", timeout=2) for _ in range(2)]
    tenant = _tenant()
    try:
        results = await asyncio.gather(
            *(stores[i % 2].reserve(tenant, TOKENS, 30) for i in range(20))
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(r.admitted for r in results) == 3


def _quota(tmp_settings: list[str], tenant: Tenant) -> tuple[Quota, CollectorRegistry]:
    registry = CollectorRegistry()
    budgets = Budgets(load_settings(tmp_settings, env={}), TenantMetrics(registry))
    return Quota(tenant, budgets), registry


async def test_quota_reserve_settle_and_headers():
    quota, registry = _quota([], Tenant("a", None, 10, 100))
    await quota.reserve(20, 30)
    assert quota.reserved == 50
    headers = dict(quota.headers())
    assert headers[b"x-ratelimit-limit-tokens"] == b"100"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"50"
    assert headers[b"x-ratelimit-remaining-requests"] == b"9"
    assert headers[b"x-ratelimit-reset-tokens"] == b"30s"
    await quota.settle(20, 5)
    assert quota.reserved == 0 and dict(quota.headers())[b"x-ratelimit-remaining-tokens"] == b"75"
    assert (
        registry.get_sample_value("hfmesh_gateway_tenant_prompt_tokens_total", {"tenant": "a"})
        == 20
    )
    with pytest.raises(ResourceExhausted) as refused:
        await quota.reserve(200)
    assert "whole budget of 100" in refused.value.message
    assert (
        registry.get_sample_value(
            "hfmesh_gateway_tenant_rejected_total", {"tenant": "a", "reason": "tokens"}
        )
        == 1
    )


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_gone_is_the_failure_mode_never_a_crash(mode, tmp_path):
    server = RedisServer(tmp_path).start()
    quota, registry = _quota(
        ["--redis_url", server.url, "--redis_failure_mode", mode, "--redis_timeout", "0.5"],
        Tenant("a", None, 0, 100),
    )
    try:
        await quota.reserve(10)
        assert quota.reserved == 10
        server.stop()
        with pytest.raises(BudgetStoreUnavailable):
            await quota.budgets.store.reserve("a", quota.limits, 1)
        again = Quota(quota.tenant, quota.budgets)
        if mode == "open":
            await again.reserve(10)  # admitted, unbudgeted
            assert again.reserved == 0
        else:
            with pytest.raises(Unavailable) as refused:
                await again.reserve(10)
            assert "--redis_failure_mode closed" in refused.value.message
        assert (
            registry.get_sample_value(
                "hfmesh_gateway_tenant_rejected_total",
                {"tenant": "a", "reason": "store_unavailable"},
            )
            == 1
        )
        await quota.settle(10, 0)  # a settle that cannot reach Redis is logged, not raised
        server.start()
        back = Quota(quota.tenant, quota.budgets)
        await back.reserve(10)  # Redis is back: budgets apply again
        assert back.reserved == 10
    finally:
        await quota.budgets.close()
        server.stop()


def test_reset_durations_as_openai_writes_them():
    assert duration(0.25) == "250ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"
    assert duration(61.25) == "1m1.25s"
