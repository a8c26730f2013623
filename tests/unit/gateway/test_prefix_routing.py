"""The routing policies' logic: chained block hashes, the bounded prefix index, sticky until
saturated, bounded-load consistent hashing for sessions, and the model list's `routing`."""

from __future__ import annotations

import random
import tracemalloc
from collections import Counter
from dataclasses import dataclass

import pytest

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import ModelEntry, parse_model_list
from services.gateway.policy import (
    AFFINITY_HIT,
    AFFINITY_MISS,
    SESSION,
    SESSION_SPILL,
    SPILL,
    RoutingOptions,
    pick_prefix,
    pick_session,
)
from services.gateway.prefix_index import ENTRY_BYTES, PrefixIndex, block_hashes

OPTIONS = RoutingOptions(block_tokens=4, index_blocks=1000, load_margin=2.0, token_unit=100)


@dataclass(eq=False)
class FakeReplica:
    """What a policy reads of a replica."""

    address: str
    in_flight: int = 0
    pending_tokens: int = 0
    last_pick: int = 0
    others_in_flight: int = 0  # what the engine reported of other clients


def replicas(count: int) -> list[FakeReplica]:
    return [FakeReplica(f"10.0.0.{i}:5000") for i in range(count)]


def test_block_hashes_chain_over_exact_tokens():
    base = list(range(100, 120))  # five blocks of four
    hashes = block_hashes("m", base, 4)
    assert len(hashes) == 5
    assert block_hashes("m", base + [1, 2, 3], 4) == hashes  # a partial block is not hashed
    changed = base[:9] + [999] + base[10:]  # a token inside block 2 differs
    other = block_hashes("m", changed, 4)
    assert other[:2] == hashes[:2] and all(
        a != b for a, b in zip(other[2:], hashes[2:], strict=True)
    )
    assert set(block_hashes("adapter", base, 4)).isdisjoint(hashes)  # the seed is part of it
    # the same block of tokens after a different head hashes differently (a chain, not a set)
    assert block_hashes("m", base[4:8], 4)[0] != hashes[1]


def test_index_matches_leading_blocks_and_purges():
    index = PrefixIndex(cap=100)
    hashes = block_hashes("m", list(range(40)), 4)
    index.record("a", hashes[:6])
    assert index.matched("a", hashes) == 6
    assert index.matched("b", hashes) == 0
    assert index.best(["a", "b"], hashes) == {"a": 6, "b": 0}
    assert index.purge("a") == 6
    assert index.matched("a", hashes) == 0
    assert index.entries() == {}


def test_index_evicts_tails_before_shared_heads():
    index = PrefixIndex(cap=8)
    head = list(range(16))  # 4 shared blocks
    for tail in range(5):
        index.record("a", block_hashes("m", head + [1000 + tail] * 8, 4))
    assert index.entries() == {"a": 8}
    # the shared head survived every eviction
    assert index.matched("a", block_hashes("m", head, 4)) == 4


def test_index_never_exceeds_its_cap_under_a_long_random_workload():
    cap, addresses = 500, ["a", "b", "c"]
    index = PrefixIndex(cap=cap)
    rng = random.Random(7)
    heads = [[rng.randrange(50_000) for _ in range(rng.randrange(16, 400))] for _ in range(64)]
    tracemalloc.start()
    try:
        for step in range(4000):
            prompt = rng.choice(heads) + [rng.randrange(50_000) for _ in range(rng.randrange(80))]
            index.record(rng.choice(addresses), block_hashes("m", prompt, 4))
            if step % 97 == 0:
                assert all(n <= cap for n in index.entries().values())
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.entries() == {a: cap for a in addresses}
    assert held <= len(addresses) * cap * ENTRY_BYTES


def test_prefix_sticks_to_the_holder_and_new_prefixes_spread():
    index, live = PrefixIndex(1000), replicas(3)
    groups = [[g * 1000 + t for t in range(64)] for g in range(6)]
    homes = {}
    for g, head in enumerate(groups):
        pick = pick_prefix("m", live, head + [1, 2], index, OPTIONS)
        assert pick.reason == AFFINITY_MISS
        homes[g] = pick.replica
        pick.replica.in_flight += 1  # each new group lands on the least loaded replica
    assert Counter(r.address for r in homes.values()) == {r.address: 2 for r in live}
    for r in live:
        r.in_flight = 0
    for round_ in range(3):
        for g, head in enumerate(groups):
            pick = pick_prefix("m", live, head + [round_, 7, 7, 7, 7], index, OPTIONS)
            assert (pick.replica, pick.reason) == (homes[g], AFFINITY_HIT)
            assert pick.matched_blocks == 16 and pick.total_blocks == 17


def test_a_saturated_holder_spills_to_the_least_loaded():
    index, (a, b, c) = PrefixIndex(1000), replicas(3)
    prompt = list(range(64))
    index.record(a.address, block_hashes("m", prompt, 4))
    a.in_flight, b.in_flight, c.in_flight = 3, 2, 1
    assert pick_prefix("m", [a, b, c], prompt, index, OPTIONS).reason == AFFINITY_HIT  # 3 <= 1+2
    a.in_flight = 4
    pick = pick_prefix("m", [a, b, c], prompt, index, OPTIONS)
    assert (pick.replica, pick.reason) == (c, SPILL)
    # the spilled-to replica now holds the prompt too; pending prefill counts as load
    a.in_flight = c.in_flight = 0
    a.pending_tokens = 1000  # ten requests' worth of prefill queued on a
    assert pick_prefix("m", [a, b, c], prompt, index, OPTIONS).replica is c
    a.pending_tokens = 0
    c.others_in_flight = 9  # another gateway keeps c busy
    assert pick_prefix("m", [a, b, c], prompt, index, OPTIONS).replica is a


def test_a_spill_pays_for_the_prefix_it_recomputes():
    index, (a, b) = PrefixIndex(1000), replicas(2)
    prompt = list(range(64))  # 16 blocks: a miss adds 0.64 of a request's load
    index.record(a.address, block_hashes("m", prompt, 4))
    a.in_flight, a.pending_tokens = 2, 50  # load 2.5: more than b's 0 + margin 2 ...
    pick = pick_prefix("m", [a, b], prompt, index, OPTIONS)
    assert (pick.replica, pick.reason) == (a, AFFINITY_HIT)  # ... but not than b's 0.64 + 2
    a.pending_tokens = 70
    assert pick_prefix("m", [a, b], prompt, index, OPTIONS).reason == SPILL


def test_a_spilled_prefix_moves_with_its_newest_copy():
    index, (a, b) = PrefixIndex(1000), replicas(2)
    prompt = list(range(64))
    index.record(a.address, block_hashes("m", prompt, 4))
    a.in_flight = 5
    assert pick_prefix("m", [a, b], prompt, index, OPTIONS).replica is b  # spills
    a.in_flight = 0
    # both hold it now; it stays with b instead of alternating between the two copies
    picks = [pick_prefix("m", [a, b], prompt + [i] * 4, index, OPTIONS) for i in range(6)]
    assert [(p.replica, p.reason) for p in picks] == [(b, AFFINITY_HIT)] * 6


def test_sessions_stay_put_while_not_overloaded_and_move_little():
    live = replicas(4)
    homes = {f"s{i}": pick_session(f"s{i}", live, 1.25).replica for i in range(200)}
    assert len(set(homes.values())) == 4
    assert all(pick_session(k, live, 1.25).replica is r for k, r in homes.items())
    # one replica leaves: only its sessions move
    gone = live[0]
    rest = live[1:]
    moved = [k for k, r in homes.items() if pick_session(k, rest, 1.25).replica is not r]
    assert set(moved) == {k for k, r in homes.items() if r is gone}


def test_a_session_spills_past_an_overloaded_home():
    live = replicas(2)
    home = pick_session("user-1", live, 1.25).replica
    other = next(r for r in live if r is not home)
    home.in_flight = 3  # bound = ceil(1.25 * 4 / 2) = 3: a fourth would exceed it
    pick = pick_session("user-1", live, 1.25)
    assert (pick.replica, pick.reason) == (other, SESSION_SPILL)
    home.in_flight = 1  # bound = ceil(1.25 * 2 / 2) = 2: room for one more
    assert pick_session("user-1", live, 1.25).reason == SESSION


def _planned(**extra):
    entry = {"name": "m", "source": "/x", "backend": "huggingface", "endpoints": {}}
    return {**entry, "endpoints": {"tokenizer": ["h:1"], "huggingface": ["h:2"]}, **extra}


def test_model_list_routing_defaults_by_task_and_round_trips():
    plan = parse_model_list(
        {
            "models": [
                _planned(name="gen", task="text_generation"),
                {**_planned(name="emb", task="text_embedding")},
                _planned(name="chat", task="text_generation", routing="session"),
            ]
        }
    )
    assert [m.routing_policy for m in plan.models] == ["prefix", "least_loaded", "session"]
    again = parse_model_list(__import__("yaml").safe_load(plan.to_yaml()))
    assert [m.routing for m in again.models] == [None, None, "session"]


def test_an_unknown_routing_policy_is_refused_by_name():
    with pytest.raises(InvalidArgument, match="routing must be one of least_loaded, prefix"):
        ModelEntry(name="m", source="", task=Task.TEXT_GENERATION, routing="random")
    with pytest.raises(InvalidArgument, match="model 'm': routing"):
        parse_model_list({"models": [_planned(task="text_generation", routing="hash")]})


async def test_a_replica_that_stops_serving_or_leaves_is_forgotten():
    from services.gateway.discovery import Endpoint
    from services.gateway.policy import RouteRequest
    from services.gateway.routing import ReplicaRouter

    endpoints = {"tokenizer": ["127.0.0.1:1"], "huggingface": ["127.0.0.1:2", "127.0.0.1:3"]}
    plan = parse_model_list({"models": [_planned(task="text_generation", endpoints=endpoints)]})
    router = ReplicaRouter(plan, RoutingOptions(block_tokens=4))
    await router.start()
    try:
        route = router.route("m")
        for replica in router.replicas.values():
            replica._set_serving(True)
        first = route.pick(request=RouteRequest(input_ids=list(range(40)))).replica
        second = route.pick(request=RouteRequest(input_ids=list(range(100, 140)))).replica
        assert first is not second  # a new prefix goes to the least recently picked
        assert route.index.entries() == {first.address: 10, second.address: 10}
        again = route.pick(request=RouteRequest(input_ids=list(range(40))))
        assert (again.replica, again.reason, again.matched_blocks) == (first, AFFINITY_HIT, 10)
        first._set_serving(False)  # e.g. killed: its engine's cache is gone
        assert route.index.entries() == {second.address: 10}
        first._set_serving(True)
        assert route.pick(request=RouteRequest(input_ids=list(range(40)))).reason == AFFINITY_MISS
        router.apply_endpoints({"m.huggingface": [Endpoint(first.address)]})  # second left
        assert second.address not in route.index.entries()
        assert {address for address, _ in route.decisions} == {first.address}
    finally:
        await router.close()
