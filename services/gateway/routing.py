"""Routing by model name over the mesh model list.

One `Replica` (gRPC channel, health watch, load) per service address, shared by
every model it serves. A model's engines are kept as
an ordered list of backends (the resolved one first, then the fallback): the
first backend with an available replica wins, and within it the model's routing
policy (`policy`: least loaded, prefix affinity, sessions) picks the replica. A
replica whose health is not SERVING, that is draining, or whose call just failed
with UNAVAILABLE before any output, is skipped. Each route counts its decisions
per replica and reason (exported as metrics) and keeps its own prefix index,
whose entries for a replica go when the replica leaves or stops serving (a
restart loses the engine's cache).

The model list's endpoints are the starting set. A gateway that follows the
control plane hands each change to `apply_endpoints`, and the control plane's
view (which includes the model list's endpoints) is then authoritative: a new
address gets its own replica and channel (so its load stays visible), a
draining one takes no new calls, and one that left is out of every route at
once while its channel closes only when its calls in flight have finished.

A model whose `scaling` allows zero replicas may have none serving: a request
then waits for one (`wait_for_replica`, woken by `notify_replicas_changed` and
by replica health changes) and counts meanwhile in `ModelRoute.waiting`, which
the gateway's metrics export so the launcher's autoscaler starts a replica.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from services.common.engine import Task
from services.common.errors import NotFound, Unavailable
from services.common.model_list import ENGINE_BACKENDS, MeshPlan, ModelEntry, revisions
from services.common.tls import TlsConfig
from services.gateway.discovery import Endpoint
from services.gateway.policy import (
    LEAST_LOADED,
    SESSION,
    Pick,
    RouteRequest,
    RoutingOptions,
    least_loaded,
    pick_prefix,
    pick_session,
)
from services.gateway.prefix_index import PrefixIndex
from services.gateway.replica import FAILURE_COOLDOWN, Replica
from services.gateway.revisions import RevisionSplit

logger = logging.getLogger(__name__)

#: How long calls in flight on a replica that left the mesh may still run (the request budget).
LEAVING_GRACE_SECONDS = 600.0
TOKENIZER = "tokenizer"


@dataclass
class ModelRoute:
    entry: ModelEntry
    tokenizers: list[Replica] = field(default_factory=list)
    engines: list[tuple[str, list[Replica]]] = field(default_factory=list)
    waiting: int = 0  # requests waiting for a replica to appear (scale from zero)
    options: RoutingOptions = field(default_factory=RoutingOptions)
    index: PrefixIndex = field(init=False)
    #: (replica address, reason) → decisions
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: the LoRA adapter a request for an adapter name selects (`ReplicaRouter.route`)
    adapter: str | None = None

    def __post_init__(self) -> None:
        self.index = PrefixIndex(self.options.index_blocks)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def task(self) -> Task:
        return self.entry.task

    @property
    def engine_model(self) -> str:
        """The model name engine requests carry: the adapter's, else the model's."""
        return self.adapter or self.entry.name

    def engine(self, exclude: set[Replica] | frozenset = frozenset()) -> Replica:
        return self.pick(exclude).replica

    def pick(
        self, exclude: set[Replica] | frozenset = frozenset(), request: RouteRequest | None = None
    ) -> Pick:
        """The engine replica for a request, by the model's routing policy; counted and
        logged (debug) with its reason."""
        for _, replicas in self.engines:
            live = [r for r in replicas if r.available and r not in exclude]
            if live:
                pick = self._choose(live, request or RouteRequest())
                self.decisions[pick.replica.address, pick.reason] += 1
                logger.debug(
                    "route %s -> %s: %s (%d/%d prefix blocks held)",
                    self.name,
                    pick.replica.address,
                    pick.reason,
                    pick.matched_blocks,
                    pick.total_blocks,
                )
                return pick
        backends = ", ".join(b for b, _ in self.engines) or "none configured"
        raise Unavailable(f"no engine is ready for model '{self.name}' (backends: {backends})")

    def _choose(self, live: list[Replica], request: RouteRequest) -> Pick:
        policy = self.entry.routing_policy
        if policy == SESSION and request.session:
            return pick_session(request.session, live, self.options.session_load_factor)
        if policy == LEAST_LOADED or request.input_ids is None:
            return Pick(least_loaded(live, self.options.token_unit), LEAST_LOADED)
        return pick_prefix(self.engine_model, live, request.input_ids, self.index, self.options)

    def drop(self, replica: Replica) -> None:
        """`replica` left the model: forget it, its decision counts included (a mesh that
        scales adds and removes addresses all day; their series end with them)."""
        self.forget(replica)
        for key in [k for k in self.decisions if k[0] == replica.address]:
            del self.decisions[key]

    def forget(self, replica: Replica) -> None:
        """Drop what the prefix index knew of `replica` (it left, or its cache is gone)."""
        if purged := self.index.purge(replica.address):
            logger.info("%s: forgot %d prefix blocks of %s", self.name, purged, replica.address)

    def set_engines(self, backend: str, replicas: list[Replica]) -> None:
        """Replace one backend's replicas, keeping the entry's order of backends; the prefix
        index and the decision counts forget replicas that left."""
        for gone in set(dict(self.engines).get(backend, [])) - set(replicas):
            self.drop(gone)
        pools = {**dict(self.engines), backend: replicas}
        order = self.entry.backends + [b for b in pools if b not in self.entry.backends]
        self.engines = [(b, pools[b]) for b in order if pools.get(b)]

    @property
    def replicas(self) -> set[Replica]:
        return {*self.tokenizers, *(r for _, rs in self.engines for r in rs)}

    def tokenizer(self) -> Replica:
        live = [r for r in self.tokenizers if r.available]
        if not live:
            detail = "" if self.tokenizers else " (none configured)"
            raise Unavailable(f"no tokenizer is ready for model '{self.name}'{detail}")
        return least_loaded(live)

    @property
    def ready(self) -> bool:
        """A tokenizer and an engine are available; a model that scales to zero needs no
        engine (its requests wait for one), so a mesh starting at zero replicas is ready."""
        engine = self.scales_to_zero or any(r.available for _, rs in self.engines for r in rs)
        return engine and any(r.available for r in self.tokenizers)

    @property
    def backend(self) -> str | None:
        """The backend a request would go to now."""
        for backend, replicas in self.engines:
            if any(r.available for r in replicas):
                return backend
        return None

    @property
    def scales_to_zero(self) -> bool:
        """The model list lets this model have no replica: requests wait for one."""
        return self.entry.scaling is not None and self.entry.scaling.min_replicas == 0

    @property
    def in_flight(self) -> int:
        """Requests in flight at this model's engine replicas."""
        return sum(r.in_flight for _, replicas in self.engines for r in replicas)


class ReplicaRouter:
    """Every served model's route (by model name) to its tokenizer and engine replicas;
    owns the channels."""

    def __init__(
        self,
        plan: MeshPlan | None,
        options: RoutingOptions | None = None,
        *,
        tls: TlsConfig | None = None,
    ) -> None:
        self.plan = plan or MeshPlan(models=[])
        self.tls = tls  # of every replica's channel (None: plain)
        self.options = options or RoutingOptions()
        self.replicas: dict[str, Replica] = {}
        self.by_name: dict[str, ModelRoute] = {}
        #: public name → its revisions' split (canary)
        self.splits = {
            public: RevisionSplit(public, weights)
            for public, weights in revisions(self.plan.models).items()
        }
        #: LoRA adapter name → its base model's name
        self.adapters = {a.name: m.name for m in self.plan.models for a in m.adapters}
        self._leaving: dict[Replica, asyncio.Task[None]] = {}
        self._replicas_changed = asyncio.Event()

    def notify_replicas_changed(self) -> None:
        """Wake requests waiting for a replica: call after replicas were added or removed."""
        self._replicas_changed.set()
        self._replicas_changed = asyncio.Event()

    def _replica(self, address: str) -> Replica:
        if address not in self.replicas:
            self.replicas[address] = Replica(address, on_lost=self._forget, tls=self.tls)
        return self.replicas[address]

    def _forget(self, replica: Replica) -> None:
        for route in self.by_name.values():
            route.forget(replica)

    async def start(self) -> None:
        for entry in self.plan.models:
            endpoints = self.plan.endpoints.get(entry.name)
            route = ModelRoute(entry, options=self.options)
            if endpoints is not None:
                route.tokenizers = [self._replica(a) for a in endpoints.tokenizer]
                backends = list(entry.backends) + [
                    b for b in endpoints.engines if b not in entry.backends
                ]
                route.engines = [
                    (b, [self._replica(a) for a in endpoints.engines[b]])
                    for b in backends
                    if endpoints.engines.get(b)
                ]
            self.by_name[entry.name] = route
        for replica in self.replicas.values():
            replica.start()

    def apply_endpoints(self, changes: Mapping[str, Sequence[Endpoint]]) -> None:
        """Follow a control plane change (`Discovery`'s `on_change`): each named service
        (`<model>.tokenizer`, `<model>.<backend>`) of a served model now has exactly these
        replicas; other services are ignored."""
        for service, endpoints in changes.items():
            model, _, role = service.rpartition(".")
            route = self.by_name.get(model)
            if route is None or role not in (TOKENIZER, *ENGINE_BACKENDS):
                continue
            replicas = []
            for endpoint in endpoints:
                replica = self.replicas.get(endpoint.address)
                if replica is None:
                    replica = self._replica(endpoint.address)
                    replica.start()
                replica.draining = endpoint.draining
                replicas.append(replica)
            if role == TOKENIZER:
                route.tokenizers = replicas
            else:
                route.set_engines(role, replicas)
        in_use = {r for route in self.by_name.values() for r in route.replicas}
        for address, replica in list(self.replicas.items()):
            if replica not in in_use:
                logger.info("%s left the mesh: closing once its calls finish", address)
                for route in self.by_name.values():
                    route.drop(replica)
                del self.replicas[address]
                self._leaving[replica] = asyncio.ensure_future(self._close_leaving(replica))
        self.notify_replicas_changed()

    async def _close_leaving(self, replica: Replica) -> None:
        try:
            await replica.close(LEAVING_GRACE_SECONDS)
        finally:
            self._leaving.pop(replica, None)

    async def close(self) -> None:
        for task in list(self._leaving.values()):
            task.cancel()
        replicas = [*self.replicas.values(), *self._leaving]
        await asyncio.gather(*self._leaving.values(), return_exceptions=True)
        await asyncio.gather(*(r.close() for r in replicas), return_exceptions=True)

    def route(
        self,
        name: str,
        session: str | None = None,
        visible: Callable[[str], bool] | None = None,
    ) -> ModelRoute:
        """The route of a model name; for a public name with revisions, the revision this
        request goes to (`RevisionSplit.pick`); for a LoRA adapter's name, its base model's
        route with the adapter selected. `visible`: the names the caller may use (a tenant's);
        any other is unknown to it."""
        if visible is not None and not visible(name):
            raise self.unknown(name, visible)
        if name in self.splits:
            name = self.splits[name].pick(session)
        base = self.adapters.get(name)
        if base is not None and base in self.by_name:
            # the base model's route (its replicas, index and counts), selecting the adapter
            route = copy.copy(self.by_name[base])
            route.adapter = name
            return route
        try:
            return self.by_name[name]
        except KeyError:
            raise self.unknown(name, visible) from None

    def names(self, visible: Callable[[str], bool] | None = None) -> list[str]:
        """Every model name, public name and LoRA adapter name served (those `visible`, when
        given)."""
        served = [*self.by_name, *self.splits, *self.adapters]
        return [n for n in served if visible is None or visible(n)]

    def unknown(self, name: str, visible: Callable[[str], bool] | None = None) -> NotFound:
        known = ", ".join(self.names(visible)) or "none"
        return NotFound(f"The model '{name}' does not exist (served models: {known})")

    def model_ready(self, name: str) -> bool:
        """A model name's readiness; a public name's is that of any revision with weight."""
        split = self.splits.get(name)
        if split is None:
            return self.route(name).ready
        return any(self.by_name[r].ready for r, weight in split.weights.items() if weight > 0)

    def apply_model_list(self, plan: MeshPlan) -> None:
        """Take a re-read model list's traffic weights and routing policies for the models
        and public names already routed; anything else in it needs a restart (logged)."""
        entries = {entry.name: entry for entry in plan.models}
        for name, route in self.by_name.items():
            if name in entries:
                route.entry.routing = entries[name].routing
        for public, weights in revisions(plan.models).items():
            split = self.splits.get(public)
            if split is None or set(weights) != set(split.weights):
                logger.warning("revisions of %s changed: a restart applies that", public)
                continue
            split.set_weights(weights)
        if added := set(entries) - set(self.by_name):
            logger.warning("models %s are new: a restart serves them", ", ".join(sorted(added)))

    @property
    def ready(self) -> bool:
        return bool(self.by_name) and all(route.ready for route in self.by_name.values())

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0 or not self.replicas:
                return False
            await _first_of([r.changed for r in self.replicas.values()], left)
        return True

    async def wait_for_replica(self, model: str, timeout: float) -> bool:
        """Wait up to `timeout` s until `model` has an available engine replica; False if
        none came. The request counts in the route's `waiting` meanwhile."""
        route = self.route(model)
        route.waiting += 1
        try:
            return await self._wait(
                lambda: route.backend is not None,
                lambda: [r for _, replicas in route.engines for r in replicas],
                timeout,
            )
        finally:
            route.waiting -= 1

    async def wait_for_tokenizer(self, model: str, timeout: float) -> bool:
        """Wait up to `timeout` s until `model` has an available tokenizer (one restarting
        comes back); False if none came."""
        route = self.route(model)
        return await self._wait(
            lambda: any(r.available for r in route.tokenizers), lambda: route.tokenizers, timeout
        )

    async def _wait(
        self,
        done: Callable[[], bool],
        replicas: Callable[[], list[Replica]],
        timeout: float,
    ) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changes = [self._replicas_changed, *(r.changed for r in replicas())]
            # a replica cooling down after a failure comes back without an event
            await _first_of(changes, min(left, FAILURE_COOLDOWN))
        return True


async def _first_of(events: list[asyncio.Event], timeout: float) -> None:
    """Return when one of `events` is set or `timeout` s passed."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
