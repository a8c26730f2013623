"""The current xDS resources, re-rendered when the store changes, with a version per type.

A type's version (`"1"`, `"2"`, ...) moves only when something of that type changed, so an
endpoint coming or going bumps the ClusterLoadAssignment version and nothing else. Bursts of
store changes (a registration storm) are rendered once per event-loop turn. Each ADS stream
`watch()`es the cache and gets `CHANGED` on its queue after every new version.
"""

from __future__ import annotations

import asyncio

from services.control_plane.resources import TYPE_URLS, Resources, render
from services.control_plane.store import EndpointStore

CHANGED = object()


class SnapshotCache:
    def __init__(self, store: EndpointStore) -> None:
        self._store = store
        self.resources: Resources = {type_url: {} for type_url in TYPE_URLS}
        self._versions = {type_url: 0 for type_url in TYPE_URLS}
        self._watchers: set[asyncio.Queue[object]] = set()
        self._pending = False
        store.subscribe(self._schedule)
        self.refresh()

    def version(self, type_url: str) -> str:
        return str(self._versions[type_url])

    def watch(self) -> asyncio.Queue[object]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[object]) -> None:
        self._watchers.discard(queue)

    def refresh(self) -> None:
        self._pending = False
        rendered = render(self._store)
        changed = False
        for type_url in TYPE_URLS:
            if rendered[type_url] != self.resources[type_url]:
                self.resources[type_url] = rendered[type_url]
                self._versions[type_url] += 1
                changed = True
        if changed:
            for queue in self._watchers:
                queue.put_nowait(CHANGED)

    def _schedule(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.refresh()
            return
        self._pending = True
        loop.call_soon(self.refresh)
