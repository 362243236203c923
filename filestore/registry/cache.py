"""The cache index: one `cache_entries` row per file whose bytes sit in the cache area.

A row is written in the same transaction that puts the bytes there (a fill's install, an uploaded
file's move from `files/`), so the index and the cache area agree except across a crash, which
start-up reconciliation (`reconcile.py`) repairs. Triggers (registry migration 3) drop a row when
its file is deleted or replaced and keep `cache.entries` / `cache.bytes` counted.

`last_access` is written in batches (`usage.py`), never by a read itself. Eviction draws random
entries (`sample`) by slot: slots number the entries 0..n-1 without holes (a trigger moves the last
entry into the slot a delete frees), so every entry is equally likely and a draw is an index seek,
whatever the number of entries. (Drawing random rowids instead favours the entries after a gap,
and long-lived entries, the popular ones, end up after the largest gaps.)
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    path: str
    version: int
    size: int
    last_access: float


_COLUMNS = "path, version, size, last_access"



class CacheRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, path: str, version: int, size: int, sha256: str,
            now: float) -> None:
        """Index an entry (a new one takes the next free slot; a known path keeps its own)."""
        self._conn.execute(
            "INSERT INTO cache_entries (path, version, size, sha256, last_access, slot) "
            "VALUES (?, ?, ?, ?, ?, (SELECT coalesce(max(slot) + 1, 0) FROM cache_entries)) "
            "ON CONFLICT (path) DO UPDATE SET version = excluded.version, size = excluded.size, "
            "sha256 = excluded.sha256, last_access = excluded.last_access",
            (path, version, size, sha256, now),
        )

    def remove(self, path: str) -> bool:
        return self._conn.execute("DELETE FROM cache_entries WHERE path = ?", (path,)).rowcount > 0

    def get(self, path: str) -> CacheEntry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE path = ?",
                                 (path,)).fetchone()
        return CacheEntry(*row) if row else None

    def touch(self, accesses: Iterable[tuple[float, str]]) -> None:
        """Record reads: (when, path) pairs; an older time never overwrites a newer one."""
        self._conn.executemany(
            "UPDATE cache_entries SET last_access = ?1 WHERE path = ?2 AND last_access < ?1",
            accesses,
        )

    def sample(self, count: int, rng: random.Random) -> list[CacheEntry]:
        """Up to `count` distinct entries drawn uniformly at random: random slots (dense, see
        registry migration 3), each an index seek, however many entries there are."""
        row = self._conn.execute("SELECT max(slot) FROM cache_entries").fetchone()
        if row[0] is None:
            return []
        slots = {rng.randrange(row[0] + 1) for _ in range(count)}
        marks = ", ".join("?" * len(slots))
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE slot IN ({marks})",
                                  list(slots)).fetchall()
        return [CacheEntry(*r) for r in rows]

    def page(self, after: str, limit: int) -> list[CacheEntry]:
        """Up to `limit` entries with paths after `after`, in path order (start-up repair)."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE path > ? "
                                  "ORDER BY path LIMIT ?", (after, limit)).fetchall()
        return [CacheEntry(*row) for row in rows]
