"""Budget state per tenant: two token buckets (requests and tokens per minute), in memory or
in Redis.

Each budget is a bucket that holds at most its limit and refills at limit / 60 per second,
so a tenant may burst up to a minute's budget and then goes at the budget's pace. A
reservation takes what a request may use at once; settling gives back what it did not use
(or takes what it used beyond the reservation: a bucket may go below zero, and the next
requests wait for the debt to refill). Limits of 0 are no limit.

`reserve` is all or nothing (its tokens, and `requests`: 1 for a request's first
reservation, 0 for a further one of the same request): a request that does not fit takes
nothing and learns how long until it would fit (`retry_after`). A request needing more tokens
than the whole budget never fits (`fits` False). `adjust` gives tokens back (positive) or
charges them (negative).

Both stores run the same arithmetic. `MemoryBudgetStore` is one gateway's own; with
`RedisBudgetStore` every gateway replica shares the buckets: each reserve or adjust is one Lua
script, run atomically by Redis against Redis's own clock (`TIME`), so there is no
read-modify-write race between replicas and no clock skew between them. A bucket's key
expires once it would have refilled anyway. A Redis that cannot be reached raises
`BudgetStoreUnavailable`; what then happens is the gateway's `--redis_failure_mode`
(services/gateway/quota.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Seconds a budget takes to refill from empty: budgets are per minute.
WINDOW = 60.0


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class Snapshot:
    """A tenant's buckets after an operation."""

    admitted: bool
    remaining_requests: float
    remaining_tokens: float
    #: Seconds until the bucket is full again.
    reset_requests: float
    reset_tokens: float
    #: Refused: the budget at fault ("requests" or "tokens"), seconds until the request would
    #: fit, and whether it ever can.
    reason: str | None = None
    retry_after: float = 0.0
    fits: bool = True


class BudgetStoreUnavailable(Exception):
    """The shared budget store (Redis) did not answer."""


class BudgetStore(Protocol):
    async def reserve(
        self, tenant: str, limits: Limits, tokens: int, requests: int = 1
    ) -> Snapshot: ...

    async def adjust(self, tenant: str, limits: Limits, tokens: int) -> Snapshot: ...

    async def close(self) -> None: ...


def _refill(level: float, limit: int, elapsed: float) -> float:
    return min(float(limit), level + elapsed * limit / WINDOW)


def _reset(level: float, limit: int) -> float:
    return 0.0 if limit <= 0 else max(0.0, (limit - level) * WINDOW / limit)


@dataclass
class _Buckets:
    requests: float
    tokens: float
    stamp: float


class MemoryBudgetStore:
    """This process's buckets (one gateway replica; `clock` for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, _Buckets] = {}

    def _current(self, tenant: str, limits: Limits) -> _Buckets:
        now = self.clock()
        state = self.buckets.get(tenant)
        if state is None:
            state = _Buckets(limits.requests_per_minute, limits.tokens_per_minute, now)
        elapsed = max(0.0, now - state.stamp)
        state = _Buckets(
            _refill(state.requests, limits.requests_per_minute, elapsed),
            _refill(state.tokens, limits.tokens_per_minute, elapsed),
            now,
        )
        self.buckets[tenant] = state
        return state

    def _snapshot(self, state: _Buckets, limits: Limits, **refusal: object) -> Snapshot:
        return Snapshot(
            admitted=not refusal,
            remaining_requests=state.requests,
            remaining_tokens=state.tokens,
            reset_requests=_reset(state.requests, limits.requests_per_minute),
            reset_tokens=_reset(state.tokens, limits.tokens_per_minute),
            **refusal,  # type: ignore[arg-type]
        )

    async def reserve(
        self, tenant: str, limits: Limits, tokens: int, requests: int = 1
    ) -> Snapshot:
        state = self._current(tenant, limits)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm > 0 and state.requests < requests:
            wait = (requests - state.requests) * WINDOW / rpm
            return self._snapshot(state, limits, reason="requests", retry_after=wait)
        if tpm > 0 and tokens > tpm:
            return self._snapshot(state, limits, reason="tokens", retry_after=WINDOW, fits=False)
        if tpm > 0 and state.tokens < tokens:
            wait = (tokens - state.tokens) * WINDOW / tpm
            return self._snapshot(state, limits, reason="tokens", retry_after=wait)
        if rpm > 0:
            state.requests -= requests
        if tpm > 0:
            state.tokens -= tokens
        return self._snapshot(state, limits)

    async def adjust(self, tenant: str, limits: Limits, tokens: int) -> Snapshot:
        state = self._current(tenant, limits)
        if limits.tokens_per_minute > 0:
            state.tokens = min(float(limits.tokens_per_minute), state.tokens + tokens)
        return self._snapshot(state, limits)

    async def close(self) -> None:
        self.buckets.clear()


# KEYS[1]: the tenant's hash. ARGV: requests per minute, tokens per minute, tokens, mode
# ("reserve" or "adjust"), requests. Returns {admitted, requests, tokens, reason, retry_after,
# fits} with the levels as strings (Redis turns Lua numbers into integers).
_SCRIPT = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local requests = tonumber(ARGV[5])
local window = 60.0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'r', 't', 's')
local req = tonumber(saved[1]) or rpm
local tok = tonumber(saved[2]) or tpm
local elapsed = math.max(0, now - (tonumber(saved[3]) or now))
req = math.min(rpm, req + elapsed * rpm / window)
tok = math.min(tpm, tok + elapsed * tpm / window)
local admitted, reason, wait, fits = 1, '', 0, 1
if ARGV[4] == 'reserve' then
  if rpm > 0 and req < requests then
    admitted, reason, wait = 0, 'requests', (requests - req) * window / rpm
  elseif tpm > 0 and tokens > tpm then
    admitted, reason, wait, fits = 0, 'tokens', window, 0
  elseif tpm > 0 and tok < tokens then
    admitted, reason, wait = 0, 'tokens', (tokens - tok) * window / tpm
  else
    if rpm > 0 then req = req - requests end
    if tpm > 0 then tok = tok - tokens end
  end
elseif tpm > 0 then
  tok = math.min(tpm, tok + tokens)
end
redis.call('HSET', KEYS[1], 'r', tostring(req), 't', tostring(tok), 's', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return {admitted, tostring(req), tostring(tok), reason, tostring(wait), fits}
"""


class RedisBudgetStore:
    """Buckets every gateway replica shares, in Redis (`--redis_url`)."""

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        import redis.asyncio as aioredis  # only gateways configured with Redis need it

        self._errors: tuple[type[BaseException], ...] = (
            aioredis.RedisError,
            OSError,
            TimeoutError,
        )
        self.client = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.script = self.client.register_script(_SCRIPT)
        self.prefix = prefix

    async def _run(
        self, tenant: str, limits: Limits, tokens: int, mode: str, requests: int = 0
    ) -> Snapshot:
        args: list[int | str] = [
            limits.requests_per_minute,
            limits.tokens_per_minute,
            tokens,
            mode,
            requests,
        ]
        try:
            reply = await self.script(keys=[f"{self.prefix}:{tenant}"], args=args)
        except self._errors as error:
            raise BudgetStoreUnavailable(f"{type(error).__name__}: {error}") from None
        admitted, requests_left, tokens_left, reason, wait, fits = reply
        requests_level, level = float(requests_left), float(tokens_left)
        refusal: dict[str, object] = {}
        if not int(admitted):
            refusal = {"reason": _text(reason), "retry_after": float(wait), "fits": bool(fits)}
        return Snapshot(
            admitted=bool(int(admitted)),
            remaining_requests=requests_level,
            remaining_tokens=level,
            reset_requests=_reset(requests_level, limits.requests_per_minute),
            reset_tokens=_reset(level, limits.tokens_per_minute),
            **refusal,  # type: ignore[arg-type]
        )

    async def reserve(
        self, tenant: str, limits: Limits, tokens: int, requests: int = 1
    ) -> Snapshot:
        return await self._run(tenant, limits, tokens, "reserve", requests)

    async def adjust(self, tenant: str, limits: Limits, tokens: int) -> Snapshot:
        return await self._run(tenant, limits, tokens, "adjust")

    async def close(self) -> None:
        await self.client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def whole_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))
