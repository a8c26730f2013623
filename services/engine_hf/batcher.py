"""Dynamic batching: concurrent requests share one forward pass.

A batch takes every request already queued (up to `max_batch_size` rows). If
that is fewer rows than the previous batch held, it waits up to `max_wait_ms`
for the rest: under steady load (clients sending their next request when the
last one returns) batches refill to their full size instead of splitting into
fragments, while a lone request after a quiet spell does not wait at all.
Batches run one at a time in a worker thread (never on the event loop);
requests arriving meanwhile queue up and form the next batch. `max_batch_size=1`
is one request at a time, the behaviour of KServe's HF backend. A request larger
than the limit runs alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import Unavailable

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass
class QueuedRequest(Generic[Req]):
    """A submitted request waiting for its batch; `rows` is its share of `max_batch_size`."""

    request: Req
    rows: int
    future: asyncio.Future


class DynamicBatcher(Generic[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[list[Req]], list[Res | BaseException]],
        *,
        rows: Callable[[Req], int],
        max_batch_size: int,
        max_wait_ms: float,
        executor: Executor,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._rows = rows
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._executor = executor
        self._pending: deque[QueuedRequest[Req]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._on_change = on_change or (lambda waiting, running: None)
        self.running = 0
        self._expected_rows = 1
        self.batches = 0
        self.batched_rows = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="dynamic-batcher"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the engine is shutting down"))

    async def submit(self, request: Req) -> Res:
        if self._task is None:
            raise Unavailable("the engine is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(QueuedRequest(request, max(1, self._rows(request)), future))
        self._arrived.set()
        self._notify()
        return await future

    def _notify(self) -> None:
        self._on_change(len(self._pending), self.running)

    async def _wait_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _collect(self) -> list[QueuedRequest[Req]]:
        while not self._pending:
            await self._wait_arrival(None)
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch_size:
            if self._pending:
                if rows + self._pending[0].rows > self.max_batch_size:
                    break  # it opens the next batch
                item = self._pending.popleft()
                batch.append(item)
                rows += item.rows
                continue
            if rows >= self._expected_rows:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._wait_arrival(remaining):
                break
        self._expected_rows = min(rows, self.max_batch_size)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._collect() if not item.future.done()]
            if not batch:
                continue
            self.running = len(batch)
            self._notify()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, [i.request for i in batch]
                )
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Unavailable("the engine is shutting down"))
                raise
            except Exception as error:  # noqa: BLE001 - run_batch reports per request; this is a bug
                logger.exception("batch failed")
                results = [error] * len(batch)
            self.batches += 1
            self.batched_rows += sum(item.rows for item in batch)
            logger.debug(
                "batch %d: %d requests, %d rows",
                self.batches,
                len(batch),
                sum(i.rows for i in batch),
            )
            self.running = 0
            self._notify()
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
