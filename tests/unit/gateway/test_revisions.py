"""Canary splits: weights, sessions on their revision, run-time changes, model-list checks."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import yaml

from services.common.errors import InvalidArgument, NotFound
from services.common.model_list import parse_model_list
from services.gateway.revisions import RevisionSplit, watch_model_list
from services.gateway.routing import ReplicaRouter
from tests.helpers.metrics import poll


def test_round_robin_follows_the_weights_exactly_and_interleaves():
    split = RevisionSplit("chat", {"v1": 90, "v2": 10})
    picks = [split.pick() for _ in range(2000)]
    assert Counter(picks) == {"v1": 1800, "v2": 200}
    assert split.requests == {"v1": 1800, "v2": 200}
    assert "v2" in picks[:10]  # not 1800 v1 first


def test_sessions_stay_on_their_revision_and_follow_weight_changes():
    split = RevisionSplit("chat", {"v1": 50, "v2": 50})
    homes = {f"s{i}": split.pick(f"s{i}") for i in range(400)}
    assert all(split.pick(k) == v for k, v in homes.items())
    assert 140 < sum(v == "v2" for v in homes.values()) < 260
    split.set_weights({"v1": 50, "v2": 100})
    moved = {k for k, v in homes.items() if split.pick(k) != v}
    assert all(homes[k] == "v1" for k in moved)  # only toward the heavier revision
    split.set_weights({"v1": 0, "v2": 100})
    assert {split.pick(k) for k in homes} == {"v2"}
    assert {split.pick() for _ in range(50)} == {"v2"}


def _entry(name: str, **extra):
    return {
        "name": name,
        "source": "/x",
        "task": "text_generation",
        "backend": "huggingface",
        "endpoints": {"tokenizer": ["h:1"], "huggingface": ["h:2"]},
        **extra,
    }


def test_the_model_list_checks_revisions():
    with pytest.raises(InvalidArgument, match="traffic needs revision_of"):
        parse_model_list({"models": [_entry("a", traffic=5)]})
    with pytest.raises(InvalidArgument, match="traffic must be a number >= 0"):
        parse_model_list({"models": [_entry("a", revision_of="p", traffic=-1)]})
    with pytest.raises(InvalidArgument, match="'a' is both a model's name"):
        parse_model_list({"models": [_entry("a"), _entry("b", revision_of="a")]})
    with pytest.raises(InvalidArgument, match="every revision of 'p' has traffic 0"):
        parse_model_list({"models": [_entry("a", revision_of="p", traffic=0)]})


async def test_a_changed_model_list_file_is_applied(tmp_path):
    path = tmp_path / "mesh.yaml"
    document = {
        "models": [
            _entry("a", revision_of="p", traffic=90),
            _entry("b", revision_of="p", traffic=10),
        ]
    }
    path.write_text(yaml.safe_dump(document))
    seen = []
    watcher = asyncio.ensure_future(watch_model_list(str(path), 0.02, seen.append))
    try:
        await asyncio.sleep(0.1)
        assert seen == []  # unchanged
        path.write_text("models: [not, a, model]")
        await asyncio.sleep(0.1)
        assert seen == []  # invalid: skipped
        document["models"][0]["traffic"] = 0
        path.write_text(yaml.safe_dump(document))
        assert await poll(lambda: len(seen) == 1, timeout=5)
        assert [m.traffic for m in seen[0].models] == [0, 10]
    finally:
        watcher.cancel()


async def test_the_router_splits_a_public_name_and_takes_new_weights():
    def plan(a: float, b: float):
        models = [_entry("a", revision_of="p", traffic=a), _entry("b", revision_of="p", traffic=b)]
        return parse_model_list({"models": models})

    router = ReplicaRouter(plan(3, 1))
    await router.start()
    try:
        assert Counter(router.route("p").name for _ in range(8)) == {"a": 6, "b": 2}
        assert router.route("a").name == "a"  # a revision is still addressable
        assert router.splits["p"].requests == {"a": 6, "b": 2}
        assert not router.model_ready("p")  # no replica serves yet
        with pytest.raises(NotFound, match=r"served models: a, b, p\)"):
            router.route("x")
        router.apply_model_list(plan(0, 1))
        assert {router.route("p").name for _ in range(5)} == {"b"}
    finally:
        await router.close()
