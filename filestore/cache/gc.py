"""Keeping the cache area within `cache.max_size` and above `cache.min_free` free disk.

Eviction is randomized sampled LRU, as in Redis and rclone's VFS cache: draw `cache.sample`
random entries from the index, evict the least recently read of them, repeat until under budget.
Each eviction costs `sample` index seeks however many entries there are, never a scan or a sort,
and with five samples the hit ratio stays within a few percent of an exact LRU (bench/gc.py).

An entry a reader has open (in any process: readers hold a shared `flock`, see local.py) is
passed over, so eviction never pulls bytes from under a response and the accounting stays honest.
Evictions are batched, many to a transaction, so freeing a lot of space costs few fsyncs.

Pinned entries (`pins.py`) are never evicted: the index's draws never reach them (their slots
are apart, see registry/cache.py), so a cache full of pinned entries draws nothing and the
collection ends at once. Their bytes count toward `cache.max_size`: what needs more room than
the pinned bytes leave is refused at once (a fill then streams through), evicting nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import threading
import time
from collections.abc import Callable

from .. import logs
from ..config import CacheSettings
from ..errors import InUse
from ..local import LocalStore
from ..registry import CacheEntry, Registry, Tables

log = logging.getLogger("filestore.cache")

_BATCH = 64  # evictions per transaction
_FRUITLESS_DRAWS = 8  # samples in a row with nothing evictable: the rest is in use
_SIZE_FOR = 1.0  # seconds `over_budget` uses a read of the cache's size for


@dataclasses.dataclass(frozen=True)
class Collected:
    evicted: int  # entries
    freed: int  # bytes
    fits: bool  # whether what was asked for fits now


class CacheGC:
    def __init__(self, registry: Registry, local: LocalStore, settings: CacheSettings,
                 rng: random.Random | None = None,
                 last_read: Callable[[str], float | None] = lambda path: None) -> None:
        self.registry = registry
        self.local = local
        self.settings = settings
        self.rng = rng or random.Random()
        # Reads not yet written to the index (usage.py): without them, an entry read a
        # hundred times since the last flush would look as cold as one never read.
        self.last_read = last_read
        self._lock = threading.Lock()  # one collection at a time in this process
        self._warned = False  # that the pinned bytes alone are over cache.max_size
        self._size = 0  # the cache's bytes, as `over_budget` last read them
        self._size_read = -math.inf  # monotonic: when

    def cached_bytes(self) -> int:
        return self.registry.read.counters.get("cache.bytes")

    def over_budget(self, incoming: int = 0, *, fresh: bool = False) -> bool:
        """Whether `incoming` more bytes would cross a limit (a cheap check, no transaction).
        On the event loop's thread. The cache's size is the registry's at most `_SIZE_FOR`
        seconds ago (`fresh`: now) plus what this process added since (`added`): each cold read
        asks, and with a shared registry a read is a round trip on the loop. This process's
        other additions (uploaded files handed to the cache) make it `stale`; other processes'
        show at the next read, and the upkeep round (readthrough.maintain) reads it fresh every
        second and evicts what is over."""
        now = time.monotonic()
        if fresh or now - self._size_read >= _SIZE_FOR:
            self._size, self._size_read = self.cached_bytes(), now
        return self._over(self._size, incoming)

    def added(self, size: int) -> None:
        """This process put `size` more bytes into the cache (in any thread). The estimate may
        be one fill off until the next read: short when a read of the size overwrites this,
        over when that read already counted it (or the fill replaced an older entry). Short
        lets the upkeep round evict it; over costs a collection that finds nothing to do
        (`collect` reads the size again before it evicts)."""
        self._size += size

    def stale(self) -> None:
        """The cache's size changed otherwise: the next `over_budget` reads it again."""
        self._size_read = -math.inf

    def _over(self, cached: int, incoming: int) -> bool:
        if cached + incoming > self.settings.max_size:
            return True
        return shutil.disk_usage(self.local.cache_root).free - incoming < self.settings.min_free

    def excess(self) -> int:
        """Bytes that must go to be within both limits now (0: within them)."""
        over_size = self.cached_bytes() - self.settings.max_size
        free = shutil.disk_usage(self.local.cache_root).free
        return max(over_size, self.settings.min_free - free, 0)

    def collect(self, incoming: int = 0) -> Collected:
        """Evict until `incoming` more bytes fit; `fits` is False if they cannot (more than
        the whole cache, or everything left is in use). In a worker thread."""
        done = Collected(0, 0, fits=incoming <= self.settings.max_size)
        if not done.fits:
            return done
        with self._lock:
            try:
                while True:
                    evicted, freed, fits = self._evict_batch(incoming)
                    done = Collected(done.evicted + evicted, done.freed + freed, fits)
                    if fits or not evicted:
                        _log_evicted(done.evicted, done.freed, "budget")
                        return done
            finally:
                self.stale()

    def make_free(self, wanted: int) -> bool:
        """Evict until the disk has `wanted` bytes free (a PUT needs them); False if what is
        left is in use or gone. In a worker thread."""
        evicted = freed = 0
        with self._lock:
            while shutil.disk_usage(self.local.cache_root).free < wanted:
                with self.registry.transaction() as tx:
                    size = self._evict_one(tx)
                    if size is None:
                        _log_evicted(evicted, freed, "disk")
                        return False
                    tx.counters.add({"cache.evictions": 1})
                evicted, freed = evicted + 1, freed + size
        _log_evicted(evicted, freed, "disk")
        return True

    def _evict_batch(self, incoming: int) -> tuple[int, int, bool]:
        """Up to `_BATCH` evictions in one transaction: (how many, bytes freed, whether
        `incoming` fits)."""
        evicted = freed = 0
        with self.registry.transaction() as tx:
            tx.pins.set_limit(self.settings.max_size)  # the pins follow the size in force
            if self._pinned_over(tx, incoming) and incoming:
                return 0, 0, False  # evicting everything else would not make room
            cached = tx.counters.get("cache.bytes")
            fruitless = 0
            while self._over(cached, incoming) and evicted < _BATCH:
                victim = self._evict_one(tx)
                if victim is None:
                    fruitless += 1
                    if fruitless >= _FRUITLESS_DRAWS or not _evictable(tx):
                        break
                    continue
                fruitless = 0
                evicted += 1
                freed += victim
                cached -= victim
            fits = not self._over(cached, incoming)
            tx.counters.add({"cache.evictions": evicted})
        return evicted, freed, fits

    def _pinned_over(self, tx: Tables, incoming: int) -> bool:
        """Whether the pinned bytes leave no room for `incoming` (and say so, once, when they
        alone are over `cache.max_size`: it was lowered since they were pinned)."""
        pinned = tx.counters.get("cache.pinned.bytes")
        over = pinned > self.settings.max_size
        if over and not self._warned:
            logs.event(log, "cache.pinned_over", "cache: pinned entries hold {bytes:,} bytes, "
                       "more than cache.max_size ({max_size:,}): unpin a prefix or raise "
                       "cache.max_size", level=logging.WARNING, bytes=pinned,
                       max_size=self.settings.max_size)
        self._warned = over
        return pinned + incoming > self.settings.max_size

    def _evict_one(self, tx: Tables) -> int | None:
        """Evict the least recently read of a random sample: the bytes freed, or None if
        every entry drawn is in use (or the cache is empty)."""
        drawn = tx.cache.sample(self.settings.sample, self.rng)
        def recency(entry: CacheEntry) -> float:
            return max(entry.last_access, self.last_read(entry.path) or 0.0)

        for entry in sorted(drawn, key=recency):
            try:
                self.local.drop_cached(entry.path)
            except InUse:
                continue
            tx.cache.remove(entry.path)
            return entry.size
        return None


def _evictable(tx: Tables) -> bool:
    """Whether any entry is not pinned (two counters: no draw needed to know)."""
    return tx.counters.get("cache.entries") > tx.counters.get("cache.pinned.entries")


def _log_evicted(count: int, freed: int, reason: str) -> None:
    """One line per collection (its batches together), never one per entry."""
    if count:
        logs.event(log, "cache.evicted", "cache: evicted {count:,} entries ({bytes:,} bytes) "
                   + ("to stay within cache.max_size and cache.min_free" if reason == "budget"
                      else "to make room on the disk for a PUT"),
                   count=count, bytes=freed, reason=reason)
