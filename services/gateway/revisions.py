"""Canary splits: one public model name served by several revisions, each with a weight.

Model list entries with `revision_of: NAME` are the revisions of the public name NAME (each
keeps its own name, engines, tokenizer models and metrics, and can still be addressed
directly). A request for NAME goes to one revision:

- with a session key, by weighted rendezvous hashing of the key (a session stays on its
  revision; changing a weight moves only the sessions that must move);
- without one, by smooth weighted round robin (nginx's): over any run of requests the split
  is within one request of the weights, with the revisions interleaved.

Weights change at run time: `watch_model_list` re-reads the gateway's model list when the file
changes and hands the new plan to `ReplicaRouter.apply_model_list`, which updates the weights
(and each entry's routing policy). A revision at weight 0 gets no new request; requests already
running on it finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.model_list import MeshPlan, load_model_list

logger = logging.getLogger(__name__)


class RevisionSplit:
    """The revisions of one public name and their weights."""

    def __init__(self, public: str, weights: dict[str, float]) -> None:
        self.public = public
        self.weights: dict[str, float] = {}
        self._current: dict[str, float] = {}
        self.requests: Counter[str] = Counter()
        self.set_weights(weights)

    def set_weights(self, weights: dict[str, float]) -> None:
        if weights != self.weights:
            shown = ", ".join(f"{name} {weight:g}" for name, weight in weights.items())
            logger.info("traffic of %s: %s", self.public, shown)
        self.weights = dict(weights)
        self._current = {name: 0.0 for name in weights}

    def pick(self, session: str | None = None) -> str:
        """The revision for the next request (counted)."""
        live = {name: w for name, w in self.weights.items() if w > 0}
        if session:
            choice = max(live, key=lambda name: _rendezvous(session, name, live[name]))
        else:
            total = sum(live.values())
            for name, weight in live.items():
                self._current[name] += weight
            choice = max(live, key=lambda name: self._current[name])
            self._current[choice] -= total
        self.requests[choice] += 1
        return choice


def _rendezvous(key: str, name: str, weight: float) -> float:
    digest = hashlib.blake2b(f"{key}\0{name}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "little") + 1) / 2.0**64  # in (0, 1]
    return -weight / math.log(unit) if unit < 1 else math.inf


async def watch_model_list(path: str, interval: float, apply: Callable[[MeshPlan], None]) -> None:
    """Every `interval` s: when `path` changed, parse it and `apply` the plan. A list that
    does not parse is logged and skipped (the running weights stay)."""
    file = Path(path)
    seen = file.stat().st_mtime_ns if file.exists() else 0
    while True:
        await asyncio.sleep(interval)
        try:
            stamp = file.stat().st_mtime_ns
        except OSError:
            continue
        if stamp == seen:
            continue
        seen = stamp
        try:
            plan = load_model_list(file)
        except InvalidArgument as error:
            logger.warning("model list %s changed but is not valid: %s", path, error.message)
            continue
        logger.info("model list %s changed: applying its traffic weights and routing", path)
        apply(plan)
