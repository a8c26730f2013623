"""Keep a service's long-lived objects out of the cyclic garbage collector's way.

A service builds most of what it will ever hold while it starts: imported modules, a model and
its tokenizer, the app and its routes. CPython's full collection walks every tracked object
each time it runs, so under load a full collection in an engine that holds a model stalls every
request in flight for tens of milliseconds (measured: up to 113 ms in an HF engine serving
all-MiniLM-L6-v2, 25–44 ms in a gateway). `settle()` collects once and moves everything alive
into the permanent generation (`gc.freeze()`), which collections skip: what is left to walk is
what requests create.

Only a service's own process settles (its `__main__` asks for it: `GrpcServiceRunner(
settle_heap=True)`, the gateway's server after its startup); a service run inside another
process (tests) leaves that process's heap alone. Frozen objects are never collected as cycles,
so after a model is unloaded at run time `collect()` thaws, collects and freezes again, and
after a load (or an adapter's unload) `resettle()` does so only where the heap was settled.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def settle() -> None:
    """Thaw, collect every generation, freeze what survives (after a start, load or unload)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    logger.info(
        "heap settled: %d objects frozen in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1e3,
    )


def collect() -> None:
    """A full collection that also reaches what `settle` froze, leaving the heap settled (after
    a model's unload, whose cycles may be frozen). In a process that never settled (a service
    run inside tests), a plain full collection."""
    if gc.get_freeze_count():
        settle()
    else:
        gc.collect()


def resettle() -> None:
    """Settle again, where the heap was settled: after a load (its objects belong with the
    frozen) or an adapter's unload (one loaded at start may sit frozen). Elsewhere the
    collector's own schedule is enough."""
    if gc.get_freeze_count():
        settle()
