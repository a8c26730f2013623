"""The local mesh's autoscaler: KubeAI's knobs, the HorizontalPodAutoscaler's stabilization.

For every model whose entry has a `scaling` block, `Autoscaler.tick()` reads the model's load
(requests in flight at its replicas plus those waiting for one, as the gateway sees them:
`services.common.load_metrics`) and computes

    desired = clamp(ceil(load / target_requests), min_replicas, max_replicas)

A change is applied only once it has held: the count goes up when every desired count seen
over the last `scale_up_delay` seconds was above it (to the lowest of them), down when every
one seen over `scale_down_delay` was below it (to the highest of them). A burst therefore does
not add replicas before the up-delay, a lull does not remove them before the down-delay, and
a reading back at the current count restarts the wait. With `min_replicas: 0` a model idle for
`scale_down_delay` goes to zero replicas (the gateway then holds its requests, bounded by its
`scale_from_zero_wait`), and the first tick that sees a request waiting scales it to one at
once, without the up-delay; the up-delay applies again beyond one.

`scale(model, replicas)` is the launcher's: it starts or stops engine processes until the
model has `replicas`. An OSError from it leaves the count unchanged (tried again next tick).
A load that cannot be read (gateway down or restarting) changes nothing, and a model missing
from a reading is left as it is: no reading is not the same as no load.

Each decision is logged and counted on `registry` (`hfmesh_autoscaler_*` below), which the
launcher serves with `prometheus_client.start_http_server(port, registry=...)`.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.load_metrics import parse_model_load
from services.common.model_list import ModelEntry, Scaling

logger = logging.getLogger(__name__)


class LoadUnavailable(Exception):
    """The load could not be read this tick."""


class GatewayLoad:
    """Model → load (running + waiting requests), read from the gateway's `/metrics`."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.timeout = timeout

    def __call__(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as reply:
                return parse_model_load(reply.read().decode())
        except (OSError, ValueError) as error:
            raise LoadUnavailable(f"cannot read {self.url}: {error}") from None


@dataclass
class _Model:
    scaling: Scaling
    replicas: int
    since: float | None = None  # desired has stayed on one side of `replicas` since then
    toward: int = 0  # the least extreme desired count seen since `since`


class Autoscaler:
    def __init__(
        self,
        entries: Iterable[ModelEntry],
        load_source: Callable[[], Mapping[str, float]],
        scale: Callable[[str, int], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load_source = load_source
        self.scale = scale
        self.clock = clock
        self.models = {
            e.name: _Model(e.scaling, e.replicas) for e in entries if e.scaling is not None
        }
        self.registry = CollectorRegistry()
        per_model = partial(Gauge, labelnames=["model"], registry=self.registry)
        self.replicas_gauge = per_model(
            "hfmesh_autoscaler_replicas", "replicas the autoscaler runs per model"
        )
        self.desired_gauge = per_model(
            "hfmesh_autoscaler_desired_replicas",
            "replicas the last load reading asks for (before the scale delays)",
        )
        self.load_gauge = per_model(
            "hfmesh_autoscaler_load", "requests running or waiting per model at the last reading"
        )
        self.decisions = Counter(
            "hfmesh_autoscaler_decisions",
            "replica count changes per model and direction (up, down)",
            ["model", "direction"],
            registry=self.registry,
        )
        for name, model in self.models.items():
            self.replicas_gauge.labels(name).set(model.replicas)

    def tick(self) -> None:
        """Read the load once and decide for every autoscaled model."""
        if not self.models:
            return
        try:
            loads = self.load_source()
        except LoadUnavailable as error:
            logger.warning("autoscaler: %s; replica counts unchanged", error)
            return
        now = self.clock()
        for name, model in self.models.items():
            if name in loads:
                self._decide(name, model, loads[name], now)

    def _decide(self, name: str, model: _Model, load: float, now: float) -> None:
        scaling = model.scaling
        desired = scaling.clamp(math.ceil(load / scaling.target_requests))
        self.load_gauge.labels(name).set(load)
        self.desired_gauge.labels(name).set(desired)
        if model.replicas == 0 and load > 0:
            self._apply(name, model, 1, load, "a request waits for a replica")
        elif desired == model.replicas:
            model.since = None
        else:
            up = desired > model.replicas
            if model.since is None or (model.toward > model.replicas) != up:
                model.since, model.toward = now, desired  # a new wait, on this side
            model.toward = min(model.toward, desired) if up else max(model.toward, desired)
            delay = scaling.scale_up_delay if up else scaling.scale_down_delay
            if now - model.since >= delay:
                reason = f"{'above' if up else 'below'} target for {delay:g}s"
                self._apply(name, model, model.toward, load, reason)

    def _apply(self, name: str, model: _Model, replicas: int, load: float, reason: str) -> None:
        before = model.replicas
        try:
            self.scale(name, replicas)
        except OSError as error:
            logger.error(
                "autoscaler: %s %d → %d replicas failed (%s); retrying",
                name,
                before,
                replicas,
                error,
            )
            return
        model.replicas = replicas
        model.since = None
        direction = "up" if replicas > before else "down"
        self.decisions.labels(name, direction).inc()
        self.replicas_gauge.labels(name).set(replicas)
        logger.info(
            "autoscaler: %s %d → %d replicas (load %g, target %g per replica): %s",
            name,
            before,
            replicas,
            load,
            model.scaling.target_requests,
            reason,
        )
