"""What readers did, gathered in memory and written to the registry in one transaction a second.

A cache hit must not cost a write transaction (an fsync) of its own, so reads only note the time
and bump counters here, on the event loop's thread; `flush` takes the batch and writes it: access
times into the index (for eviction) and the events into the `cache.*` counters. A crash loses at
most the last second of statistics and access times, never data.
"""

from __future__ import annotations

import collections
import time

import anyio

from ..registry import CACHE_EVENTS, Registry


class Usage:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._accessed: dict[str, float] = {}
        self._events: collections.Counter[str] = collections.Counter()

    def hit(self, path: str, nbytes: int) -> None:
        self._accessed[path] = time.time()
        self._events["hits"] += 1
        self._events["hit_bytes"] += nbytes

    def last_read(self, path: str) -> float | None:
        """When `path` was last read, if not written yet. Safe from the GC's thread: one
        dict lookup, and `flush` replaces the dict rather than clearing it."""
        return self._accessed.get(path)

    def count(self, event: str, amount: int = 1) -> None:
        assert event in CACHE_EVENTS, event
        self._events[event] += amount

    async def flush(self) -> None:
        """Write what was gathered since the last flush (nothing to write: no transaction)."""
        accessed, self._accessed = self._accessed, {}
        events, self._events = self._events, collections.Counter()
        if not accessed and not events:
            return
        try:
            await anyio.to_thread.run_sync(self._write, accessed, events)
        except BaseException:
            # Not written: keep the batch for the next flush (newer entries win).
            self._accessed = {**accessed, **self._accessed}
            self._events.update(events)
            raise

    def _write(self, accessed: dict[str, float], events: collections.Counter[str]) -> None:
        with self.registry.transaction() as tx:
            tx.cache.touch([(when, path) for path, when in accessed.items()])
            tx.counters.add({f"cache.{name}": amount for name, amount in events.items()})
