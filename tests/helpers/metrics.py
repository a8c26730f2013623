"""Prometheus `/metrics` read by tests and benches, and polling with a deadline (sync and async).

A sample is keyed as exposed, labels included (`vllm:num_requests_running{model_name="llm"}`);
`total` adds a metric up over its label sets, which is what a test of one engine wants.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import httpx


def scrape(url: str) -> dict[str, float]:
    """GET a Prometheus text exposition: {sample with its labels: value}."""
    samples = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            samples[sample] = float(value)
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """`name` summed over its label sets; 0.0 when no sample has that name."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` every `interval` s: True once it holds, False when `timeout` s passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def poll(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """`wait_until` for a test on the event loop: sleeps without blocking the servers it polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels, whatever order they were exposed in
    (0.0 when absent)."""
    for key, found in samples.items():
        base, _, rest = key.partition("{")
        if base == name and dict(_LABEL.findall(rest)) == labels:
            return found
    return 0.0
