"""How one engine replica is chosen among a model's available replicas: the routing policies.

- `least_loaded`: the lowest load; among equals the one picked longest ago.
- `prefix` (sticky until saturated): the replica holding most of the prompt's leading token
  blocks (`PrefixIndex`), unless its cost exceeds the cheapest other replica's by more than
  `load_margin`; then the request spills to that one. A replica's cost is its load plus the
  prompt tokens it does not hold (the prefill a miss adds), so a spill pays for the prefix it
  recomputes. A prefix score that is only one weight in a sum hot-spots or dilutes, and hashing
  without a load term thrashes (DESIGN.md §6): affinity decides, load only vetoes. A prompt no
  replica holds goes to the least loaded one, so new prefix groups spread. Of several replicas
  holding the prompt, the one it was last sent to is its home: after a spill the prefix moves
  with its newest copy and the old one ages out of its engine's cache, where alternating
  between copies would keep both hot and halve every engine's room for other prefixes.
- `session`: consistent hashing with bounded load on the request's session key: the key's
  point on a ring of virtual nodes, walking on past any replica whose in-flight count would
  exceed `ceil(session_load_factor * (total + 1) / replicas)`. A request without a session key
  is routed by prefix.

A replica's load is its requests in flight — this gateway's, plus those of other clients as
the engine reported them on its last call — and the uncached prompt tokens this gateway sent
it that are not yet answered (prefill still queued), `token_unit` of them weighing as one
request.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from services.gateway.prefix_index import PrefixIndex, block_hashes

if TYPE_CHECKING:
    from services.gateway.replica import Replica

LEAST_LOADED, PREFIX, SESSION = "least_loaded", "prefix", "session"
#: Decision reasons, as counted in the metrics and written in the debug log.
AFFINITY_HIT, AFFINITY_MISS, SPILL = "affinity_hit", "affinity_miss", "spill"
SESSION_SPILL = "session_spill"
VIRTUAL_NODES = 64  # ring points per replica: keys spread within a few percent
_ticket = itertools.count(1)


@dataclass(frozen=True)
class RoutingOptions:
    block_tokens: int = 16
    index_blocks: int = 65536
    load_margin: float = 4.0
    token_unit: int = 1024
    session_load_factor: float = 1.25


@dataclass
class RouteRequest:
    """What a request offers the policy: the exact prompt tokens and a session key."""

    input_ids: Sequence[int] | None = None
    session: str | None = None


@dataclass
class Pick:
    replica: Replica
    reason: str
    matched_blocks: int = 0
    total_blocks: int = 0
    hashes: list[int] = field(default_factory=list, repr=False)


def load(replica: Replica, token_unit: int) -> float:
    return replica.in_flight + replica.others_in_flight + replica.pending_tokens / token_unit


def least_loaded(replicas: Sequence[Replica], token_unit: int | None = None) -> Replica:
    """Lowest load (requests in flight, plus pending prompt tokens when `token_unit` is
    given); among equals the one picked longest ago (a count shared by every pool would let
    one pool's picks steer another's: 3 tokenizer-and-engine picks per request over 3 engines
    sent every request to the same one)."""
    loads = {r: (load(r, token_unit) if token_unit else float(r.in_flight)) for r in replicas}
    low = min(loads.values())
    choice = min((r for r in replicas if loads[r] == low), key=lambda r: r.last_pick)
    choice.last_pick = next(_ticket)
    return choice


def pick_prefix(
    seed: str,
    live: Sequence[Replica],
    input_ids: Sequence[int],
    index: PrefixIndex,
    options: RoutingOptions,
) -> Pick:
    """Sticky until saturated (module docstring); writes the choice into `index`."""
    hashes = block_hashes(seed, input_ids, options.block_tokens)
    held = index.best((r.address for r in live), hashes)
    top = max(held.values(), default=0)
    if not hashes:
        pick = Pick(least_loaded(live, options.token_unit), LEAST_LOADED)
    elif top == 0:
        pick = Pick(least_loaded(live, options.token_unit), AFFINITY_MISS)
    else:
        deepest = hashes[top - 1]
        home = max(
            (r for r in live if held[r.address] == top),
            key=lambda r: index.last_sent(r.address, deepest),
        )

        def cost(replica: Replica) -> float:
            uncached = (len(hashes) - held[replica.address]) * options.block_tokens
            return load(replica, options.token_unit) + uncached / options.token_unit

        others = [r for r in live if r is not home]
        cheapest = min(others, key=lambda r: (cost(r), r.last_pick), default=None)
        if cheapest is None or cost(home) <= cost(cheapest) + options.load_margin:
            pick = Pick(home, AFFINITY_HIT)
        else:
            pick = Pick(cheapest, SPILL)
        pick.replica.last_pick = next(_ticket)
    pick.matched_blocks = held.get(pick.replica.address, 0)
    pick.total_blocks = len(hashes)
    pick.hashes = hashes
    if hashes:
        index.record(pick.replica.address, hashes)
    return pick


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=64)
def _ring(addresses: tuple[str, ...]) -> tuple[list[int], list[str]]:
    points = sorted(
        (_point(f"{address}#{i}"), address) for address in addresses for i in range(VIRTUAL_NODES)
    )
    return [p for p, _ in points], [a for _, a in points]


def pick_session(key: str, live: Sequence[Replica], load_factor: float) -> Pick:
    """Bounded-load consistent hashing (module docstring)."""
    by_address = {r.address: r for r in live}
    points, owners = _ring(tuple(sorted(by_address)))
    total = sum(r.in_flight for r in live)
    bound = math.ceil(load_factor * (total + 1) / len(live))
    start = bisect.bisect(points, _point(key))
    home = by_address[owners[start % len(owners)]]
    for step in range(len(owners)):
        replica = by_address[owners[(start + step) % len(owners)]]
        if replica.in_flight + 1 <= bound:
            break
    replica.last_pick = next(_ticket)
    return Pick(replica, SESSION if replica is home else SESSION_SPILL)
