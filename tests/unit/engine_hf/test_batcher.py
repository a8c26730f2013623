"""DynamicBatcher policy with a plain function as the batch runner (the model is not the point
here)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import InvalidArgument
from services.engine_hf.batcher import DynamicBatcher


@pytest.fixture
async def batcher():
    made = []
    executor = ThreadPoolExecutor(max_workers=1)

    def make(max_batch_size: int, max_wait_ms: float):
        seen: list[list[str]] = []

        def run(requests: list[str]):
            seen.append(list(requests))
            return [
                InvalidArgument(f"bad {r}") if r.startswith("bad") else r.upper() for r in requests
            ]

        instance = DynamicBatcher(
            run,
            rows=lambda r: 1,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            executor=executor,
        )
        instance.start()
        made.append(instance)
        return instance, seen

    yield make
    for instance in made:
        await instance.stop()
    executor.shutdown()


async def test_batches_respect_the_size_limit_and_answer_each_request(batcher):
    instance, seen = batcher(4, 50.0)
    results = await asyncio.gather(*(instance.submit(f"r{i}") for i in range(10)))
    assert results == [f"R{i}" for i in range(10)]
    assert [len(b) for b in seen] == [4, 4, 2]


async def test_a_lone_request_does_not_wait(batcher):
    instance, _ = batcher(32, 5000.0)
    start = time.monotonic()
    assert await instance.submit("solo") == "SOLO"
    assert time.monotonic() - start < 2.5


async def test_a_batch_smaller_than_the_last_waits_for_the_rest(batcher):
    instance, seen = batcher(8, 5000.0)
    await asyncio.gather(*(instance.submit(f"a{i}") for i in range(4)))
    first = [asyncio.ensure_future(instance.submit(f"b{i}")) for i in range(2)]
    await asyncio.sleep(0.05)  # the rest of the load arrives a little later
    later = [asyncio.ensure_future(instance.submit(f"c{i}")) for i in range(2)]
    await asyncio.gather(*first, *later)
    assert sorted(seen[-1]) == ["b0", "b1", "c0", "c1"]


async def test_one_bad_request_fails_alone(batcher):
    instance, seen = batcher(8, 20.0)
    good, bad = await asyncio.gather(
        instance.submit("ok"), instance.submit("bad-one"), return_exceptions=True
    )
    assert good == "OK" and isinstance(bad, InvalidArgument)
    assert len(seen) == 1
