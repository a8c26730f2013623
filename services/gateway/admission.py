"""Admission control: per-model slots and a bounded wait queue, before any tokenizing.

A model admits up to `max_in_flight_per_replica` slots for each of its engine replicas
that is ready now (at least one replica's worth while none is, so requests for a model
scaled to zero still reach the wait for its first replica). A generation holds `n`
slots (`best_of` when larger), anything else one; a request larger than the whole
capacity holds all of it. A request that does not fit waits in a FIFO queue of at most
`max_queued_per_replica` per replica, for at most `max_queue_wait` seconds within its
deadline; a full queue, or a wait that runs out, is `Unavailable` (503 + Retry-After)
at once. Cancelling a waiting request (its client went away) takes it off the queue at
once. Slots are released when the answer is complete: for a stream, when the stream ends.

Engines keep their own cap (`--max_pending_requests`) as a backstop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from services.common.errors import Unavailable
from services.gateway.grpc_clients import CallContext
from services.gateway.routing import ReplicaRouter
from services.gateway.settings import GatewaySettings
from services.gateway.streaming import LastChunk

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Waiter:
    slots: int
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ModelGate:
    """One model's slots and queue."""

    def __init__(self, name: str, admission: Admission) -> None:
        self.name = name
        self.admission = admission
        self.in_use = 0
        self.queue: deque[_Waiter] = deque()

    @property
    def replicas(self) -> int:
        """Ready engine replicas of the backend in use; for a public name with revisions,
        those of every revision that takes traffic. At least 1 (a model starting, or scaled
        to zero, still admits its first requests, which then wait for a replica)."""
        routes = self.admission.routes
        split = routes.splits.get(self.name)
        names = [r for r, w in split.weights.items() if w > 0] if split else [self.name]
        ready = 0
        for name in names:
            route = routes.by_name.get(name)
            for _, replicas in route.engines if route else []:
                if live := sum(1 for r in replicas if r.available):
                    ready += live
                    break
        return max(ready, 1)

    @property
    def capacity(self) -> int:
        return self.admission.settings.max_in_flight_per_replica * self.replicas

    @property
    def queue_limit(self) -> int:
        return self.admission.settings.max_queued_per_replica * self.replicas

    def _fits(self, slots: int) -> bool:
        return self.in_use + slots <= self.capacity

    async def acquire(self, slots: int, call: CallContext) -> int:
        slots = min(slots, self.capacity)
        if not self.queue and self._fits(slots):
            self.in_use += slots
            return slots
        if len(self.queue) >= self.queue_limit:
            raise self._refusal(f"its wait queue is full ({len(self.queue)} waiting)")
        waiter = _Waiter(slots)
        self.queue.append(waiter)
        wait = min(self.admission.settings.max_queue_wait, call.timeout())
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), wait)
        except TimeoutError:
            if waiter.future.done():  # admitted as the wait ran out: keep it
                return slots
            raise self._refusal(f"no slot freed within {wait:.3g} s") from None
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(slots)  # admitted, then cancelled before it could start
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            if waiter in self.queue:
                self.queue.remove(waiter)
                self._wake()
        return slots

    def release(self, slots: int) -> None:
        self.in_use -= slots
        self._wake()

    def _wake(self) -> None:
        """Admit waiters in order while the head fits (FIFO: a large head is not overtaken)."""
        while self.queue:
            head = self.queue[0]
            if head.future.done():
                self.queue.popleft()
                continue
            if not self._fits(min(head.slots, self.capacity)):
                return
            self.queue.popleft()
            self.in_use += head.slots
            head.future.set_result(None)

    def _refusal(self, why: str) -> Unavailable:
        refused = self.admission.refused
        refused[self.name] = refused.get(self.name, 0) + 1
        return Unavailable(
            f"model '{self.name}' is at capacity ({self.in_use} of {self.capacity} slots in "
            f"use; {why}); retry later",
            retry_after=self.admission.settings.retry_after,
        )


class Admission:
    def __init__(self, settings: GatewaySettings, routes: ReplicaRouter) -> None:
        self.settings = settings
        self.routes = routes
        self.gates: dict[str, ModelGate] = {}
        self.refused: dict[str, int] = {}

    def collect(self):
        """Prometheus: slots in use, requests waiting and requests refused, per model."""
        in_use = GaugeMetricFamily(
            "hfmesh_gateway_admission_slots_in_use", "admitted slots per model", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "hfmesh_gateway_admission_queued",
            "requests waiting for an admission slot per model",
            labels=["model"],
        )
        refused = CounterMetricFamily(
            "hfmesh_gateway_admission_refused",
            "requests refused by admission control (503) per model",
            labels=["model"],
        )
        for name, gate in self.gates.items():
            in_use.add_metric([name], gate.in_use)
            queued.add_metric([name], len(gate.queue))
            refused.add_metric([name], self.refused.get(name, 0))
        yield in_use
        yield queued
        yield refused

    @property
    def enabled(self) -> bool:
        return self.settings.max_in_flight_per_replica > 0

    def _known(self, model: str) -> bool:
        return model in self.routes.by_name or model in self.routes.splits

    def gate(self, model: str) -> ModelGate:
        gate = self.gates.get(model)
        if gate is None:
            gate = self.gates[model] = ModelGate(model, self)
        return gate

    async def run(
        self, model: Any, slots: int, call: CallContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """`work()` once admitted. A streamed answer (an async iterator) keeps its slots
        until it ends; any other answer releases them when it returns."""
        hidden = call.quota is not None and not call.quota.tenant.allows(model)
        if not self.enabled or not isinstance(model, str) or not self._known(model) or hidden:
            return await work()  # unknown models get their 404 from the work itself
        gate = self.gate(model)
        held = await gate.acquire(max(1, slots), call)
        try:
            result = await work()
        except BaseException:
            gate.release(held)
            raise
        if hasattr(result, "__aiter__") and not hasattr(result, "model_dump_json"):
            return cast(T, _releasing(cast(AsyncIterator[bytes], result), gate, held))
        gate.release(held)
        return result


async def _releasing(stream: AsyncIterator[bytes], gate: ModelGate, slots: int):
    """`stream`, holding `slots` until its answer is whole: its `LastChunk` frees them before
    it is sent, so a client that asks again as soon as it reads the end finds them free (the
    stream's bookkeeping after its last event, such as the engine call's own end, takes a few
    more turns of the event loop); otherwise its end, however it ends, frees them."""
    held = slots
    try:
        async for chunk in stream:
            if held and isinstance(chunk, LastChunk):
                gate.release(held)
                held = 0
            yield chunk
    finally:
        try:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if held:
                gate.release(held)


def generation_slots(n: int | None, best_of: int | None = None, prompts: Any = None) -> int:
    """Slots of a generation: its sequences (`n`, or `best_of` when larger) per prompt."""
    count = len(prompts) if isinstance(prompts, list) and not _token_ids(prompts) else 1
    return max(n or 1, best_of or 1) * max(1, count)


def _token_ids(prompts: list) -> bool:
    return bool(prompts) and all(isinstance(p, int) for p in prompts)
