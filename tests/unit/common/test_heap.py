"""`heap`: a service's own process freezes what it holds once loaded, and a model unloaded
later is still collected (its cycles thawed first); a service run in this process leaves the
heap alone."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from services.common import heap
from services.common.server import GrpcServiceRunner, serve_engine
from services.launcher.processes import grpc_serving
from tests.fakes import FakeEngine


class Node:
    other: Node


def _cycle() -> tuple[Node, weakref.ref]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


@pytest.fixture(autouse=True)
def thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()  # this test process stays as it was


def test_settle_freezes_what_is_alive_and_a_plain_collection_skips_it():
    node, ref = _cycle()
    heap.settle()
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert ref() is not None, "a full collection walked the frozen heap"


def test_collect_reaches_a_cycle_the_start_froze_and_settles_again():
    node, ref = _cycle()  # a model loaded at start...
    heap.settle()
    del node  # ...and unloaded later
    heap.collect()
    assert ref() is None
    assert gc.get_freeze_count() > 0


def test_collect_in_a_process_that_never_settled_is_a_plain_collection():
    node, ref = _cycle()
    del node
    heap.collect()
    assert ref() is None
    assert gc.get_freeze_count() == 0


def test_resettle_acts_only_where_the_heap_was_settled():
    heap.resettle()
    assert gc.get_freeze_count() == 0
    node, ref = _cycle()
    heap.settle()
    del node
    heap.resettle()
    assert ref() is None
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("settle", [True, False])
async def test_a_runner_settles_once_loaded_only_when_asked(settle):
    loaded = asyncio.Event()

    class Engine(FakeEngine):
        async def start(self) -> None:
            assert gc.get_freeze_count() == 0  # not before the load
            loaded.set()

    runner = GrpcServiceRunner(host="127.0.0.1", port=0, grace_seconds=0.1, settle_heap=settle)
    served = asyncio.ensure_future(serve_engine(Engine(infos=[]), runner, poll_seconds=0.01))
    await asyncio.wait_for(loaded.wait(), 10)
    while runner.bound_port is None or not await asyncio.to_thread(
        grpc_serving, f"127.0.0.1:{runner.bound_port}"
    ):
        await asyncio.sleep(0.02)
    assert (gc.get_freeze_count() > 0) is settle
    runner.request_stop()
    assert await asyncio.wait_for(served, 10) == 0
