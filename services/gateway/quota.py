"""One request's share of its tenant's budgets, and the rate-limit headers it answers with.

The flow (docs/tenants.md):

1. `TenantMiddleware` (middleware.py) names the tenant from the API key and gives the request
   a `Quota`; `GatewayState.call` puts it on the `CallContext`.
2. Once the request's tokens are known exactly (after the tokenizer hop, before any engine
   work) the serving layer calls `reserve(prompt, output)`: the prompt's tokens plus
   `min(max_tokens, --output_token_estimate)` per sequence to generate. A tenant over a
   budget gets `ResourceExhausted` (429 + Retry-After) before any byte of an answer, a stream
   included.
3. The answer settles the real usage (`settle`): the engine's token counts, streams included.
4. Anything still reserved when the request ends (an error, a client that went away) is given
   back by the middleware (`release`); the request itself still counts against the request
   budget.

Every answer of a tenant with a budget carries OpenAI's `x-ratelimit-{limit,remaining,reset}-
{requests,tokens}` headers (reset as OpenAI writes it: "1s", "6m0s", "250ms"): the state of
the buckets after the request's last budget operation. A request larger than the whole token
budget also gets `x-should-retry: false` (the header OpenAI's SDKs obey): waiting cannot help.

A shared store (Redis) that does not answer is `--redis_failure_mode`: `open` admits the
request unbudgeted (logged; counted as `store_unavailable`), `closed` refuses it with 503 +
Retry-After naming the cause. Neither is ever a 500.
"""

from __future__ import annotations

import logging
import math
import time

from prometheus_client import CollectorRegistry, Counter

from services.common.errors import ResourceExhausted, Unavailable
from services.gateway.budgets import (
    BudgetStore,
    BudgetStoreUnavailable,
    Limits,
    MemoryBudgetStore,
    RedisBudgetStore,
    Snapshot,
    whole_seconds,
)
from services.gateway.settings import GatewaySettings
from services.gateway.tenants import Tenant

logger = logging.getLogger(__name__)

#: Seconds between two warnings about an unreachable budget store.
WARN_EVERY = 10.0


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompt_tokens = Counter(
            "hfmesh_gateway_tenant_prompt_tokens",
            "prompt (input) tokens of answered requests per tenant; embeddings, rerank and "
            "KServe encoder requests count their input tokens here",
            ["tenant"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "hfmesh_gateway_tenant_completion_tokens",
            "generated tokens of answered requests per tenant",
            ["tenant"],
            registry=registry,
        )
        self.rejected = Counter(
            "hfmesh_gateway_tenant_rejected",
            "requests refused per tenant, by reason: requests / tokens (over that budget, 429), "
            "store_unavailable (the budget store did not answer: 503, or admitted unbudgeted "
            "with --redis_failure_mode open)",
            ["tenant", "reason"],
            registry=registry,
        )


class Budgets:
    """The gateway's budget store and its failure policy."""

    def __init__(self, settings: GatewaySettings, metrics: TenantMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: BudgetStore
        if settings.redis_url:
            self.store = RedisBudgetStore(
                settings.redis_url, prefix=settings.redis_key_prefix, timeout=settings.redis_timeout
            )
        else:
            self.store = MemoryBudgetStore()
        self._warned = -math.inf

    def unavailable(self, tenant: Tenant, why: str) -> None:
        """The store did not answer: open → carry on (logged), closed → 503."""
        self.metrics.rejected.labels(tenant.name, "store_unavailable").inc()
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning(
                "budget store unreachable (%s); --redis_failure_mode %s",
                why,
                self.settings.redis_failure_mode,
            )
        if self.settings.redis_failure_mode == "closed":
            raise Unavailable(
                "the rate-limit store is unreachable, and this gateway refuses requests while it "
                "is (--redis_failure_mode closed); retry later",
                retry_after=self.settings.retry_after,
            )

    async def close(self) -> None:
        await self.store.close()


class Quota:
    """A request's side of its tenant's budgets."""

    def __init__(self, tenant: Tenant, budgets: Budgets) -> None:
        self.tenant = tenant
        self.budgets = budgets
        self.limits = Limits(tenant.requests_per_minute, tenant.tokens_per_minute)
        self.reserved = 0
        self.snapshot: Snapshot | None = None

    async def reserve(self, prompt_tokens: int, output_tokens: int = 0) -> None:
        """Take the request's tokens (and, the first time, the request) from the budgets."""
        if not self.tenant.limited:
            return
        tokens = prompt_tokens + output_tokens
        # a further reservation of one request (/score on two embeddings) takes no request
        requests = 1 if self.snapshot is None else 0
        try:
            snapshot = await self.budgets.store.reserve(
                self.tenant.name, self.limits, tokens, requests
            )
        except BudgetStoreUnavailable as error:
            self.budgets.unavailable(self.tenant, str(error))
            return
        self.snapshot = snapshot
        if not snapshot.admitted:
            self._refuse(snapshot, tokens)
        self.reserved += tokens

    def _refuse(self, snapshot: Snapshot, tokens: int) -> None:
        reason = snapshot.reason or "tokens"
        self.budgets.metrics.rejected.labels(self.tenant.name, reason).inc()
        name = self.tenant.name
        if not snapshot.fits:
            message = (
                f"the request needs up to {tokens} tokens, more than tenant '{name}''s whole "
                f"budget of {self.limits.tokens_per_minute} tokens per minute; ask for fewer "
                "(max_tokens, a shorter prompt)"
            )
        elif reason == "requests":
            message = (
                f"tenant '{name}' is over its budget of {self.limits.requests_per_minute} "
                "requests per minute"
            )
        else:
            message = (
                f"tenant '{name}' is over its budget of {self.limits.tokens_per_minute} tokens "
                f"per minute (this request needs up to {tokens}; "
                f"{max(0, math.floor(snapshot.remaining_tokens))} remain)"
            )
        raise ResourceExhausted(message, retry_after=whole_seconds(snapshot.retry_after))

    async def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The request's real usage: give back what it did not use (or take what it used
        beyond its reservation) and count it per tenant."""
        metrics = self.budgets.metrics
        metrics.prompt_tokens.labels(self.tenant.name).inc(prompt_tokens)
        metrics.completion_tokens.labels(self.tenant.name).inc(completion_tokens)
        await self._give_back(self.reserved - prompt_tokens - completion_tokens)

    async def release(self) -> None:
        """Give back whatever is still reserved (the request failed or was cancelled)."""
        await self._give_back(self.reserved)

    async def _give_back(self, tokens: int) -> None:
        self.reserved = 0
        if not self.tenant.limited or self.snapshot is None or tokens == 0:
            return
        try:
            self.snapshot = await self.budgets.store.adjust(self.tenant.name, self.limits, tokens)
        except BudgetStoreUnavailable as error:
            logger.warning(
                "could not settle %d tokens of tenant %s: %s", tokens, self.tenant.name, error
            )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's rate-limit headers, for the budgets the tenant has."""
        snapshot = self.snapshot
        if snapshot is None:
            return []
        out = []
        for kind, limit, remaining, reset in (
            (
                "requests",
                self.limits.requests_per_minute,
                snapshot.remaining_requests,
                snapshot.reset_requests,
            ),
            (
                "tokens",
                self.limits.tokens_per_minute,
                snapshot.remaining_tokens,
                snapshot.reset_tokens,
            ),
        ):
            if limit <= 0:
                continue
            out += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (
                    f"x-ratelimit-remaining-{kind}".encode(),
                    str(max(0, math.floor(remaining))).encode(),
                ),
                (f"x-ratelimit-reset-{kind}".encode(), duration(reset).encode()),
            ]
        if not snapshot.fits:  # no wait makes it fit: OpenAI's SDKs then do not retry
            out.append((b"x-should-retry", b"false"))
        return out


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: "250ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    shown = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{shown}s" if minutes else f"{shown}s"
