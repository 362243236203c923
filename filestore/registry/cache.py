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

Pinned entries (`pins.py`, migration 10) have negative slots, -1..-n without holes: draws never
reach them. An entry is pinned when it enters the cache under a pinned prefix, or when its prefix
is pinned later (`pin_under`), and unpinned when no pin covers it any more (`unpin_under`).
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import Iterable

from .counters import MAX_CHAR
from .files import _FILE_COLUMNS, FileRecord
from .pins import PIN_LIMIT


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    path: str
    version: int
    size: int
    last_access: float
    pinned: bool = False  # never evicted (its slot is negative)


_COLUMNS = "path, version, size, last_access, slot < 0"
# The next slot of each side: evictable entries count up from 0, pinned ones down from -1.
_NEXT_FREE = "SELECT max(coalesce(max(slot), -1), -1) + 1 FROM cache_entries"
_NEXT_PINNED = "SELECT min(coalesce(min(slot), 0), 0) - 1 FROM cache_entries"
_FILES_AS_F = ", ".join(f"f.{column.strip()}" for column in _FILE_COLUMNS.split(","))


def _entry(row: tuple[str, int, int, float, int]) -> CacheEntry:
    return CacheEntry(row[0], row[1], row[2], row[3], bool(row[4]))


class CacheRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, path: str, version: int, size: int, sha256: str,
            now: float, inode: int = 0) -> None:
        """Index an entry (a new one takes the next free slot; a known path keeps its own). A
        new entry under a pinned prefix is pinned, if the pinned bytes stay within
        `cache.pin_limit` (else it is an ordinary one: the cache stays within its bound).
        `inode`: of the cached bytes; a shared registry keeps it per node, here the file's
        row holds it (`FileRows.set_inode`: one node, one inode)."""
        pinned = self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM cache_pins WHERE substr(?1, 1, length(prefix)) = prefix)"
            " AND (SELECT value FROM counters WHERE name = 'cache.pinned.bytes') + ?2 <= "
            "(SELECT value FROM counters WHERE name = ?3)", (path, size, PIN_LIMIT)).fetchone()[0]
        self._conn.execute(
            "INSERT INTO cache_entries (path, version, size, sha256, last_access, slot) "
            f"VALUES (?, ?, ?, ?, ?, ({_NEXT_PINNED if pinned else _NEXT_FREE})) "
            "ON CONFLICT (path) DO UPDATE SET version = excluded.version, size = excluded.size, "
            "sha256 = excluded.sha256, last_access = excluded.last_access",
            (path, version, size, sha256, now),
        )

    def remove(self, path: str) -> bool:
        return self._conn.execute("DELETE FROM cache_entries WHERE path = ?", (path,)).rowcount > 0

    def get(self, path: str) -> CacheEntry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE path = ?",
                                 (path,)).fetchone()
        return _entry(row) if row else None

    def touch(self, accesses: Iterable[tuple[float, str]]) -> None:
        """Record reads: (when, path) pairs; an older time never overwrites a newer one."""
        self._conn.executemany(
            "UPDATE cache_entries SET last_access = ?1 WHERE path = ?2 AND last_access < ?1",
            accesses,
        )

    def sample(self, count: int, rng: random.Random) -> list[CacheEntry]:
        """Up to `count` distinct evictable entries drawn uniformly at random: random slots
        (dense, see registry migration 3), each an index seek, however many entries there are.
        Never a pinned entry (negative slots): none at all when every entry is pinned."""
        row = self._conn.execute("SELECT max(slot) FROM cache_entries").fetchone()
        if row[0] is None or row[0] < 0:
            return []
        slots = {rng.randrange(row[0] + 1) for _ in range(count)}
        marks = ", ".join("?" * len(slots))
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE slot IN ({marks})",
                                  list(slots)).fetchall()
        return [_entry(r) for r in rows]

    def page(self, after: str, limit: int) -> list[CacheEntry]:
        """Up to `limit` entries with paths after `after`, in path order (start-up repair)."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE path > ? "
                                  "ORDER BY path LIMIT ?", (after, limit)).fetchall()
        return [_entry(row) for row in rows]

    # -- pins (see pins.py) ----------------------------------------------------------------------

    def _under(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        return self._conn.execute(
            "SELECT path, slot FROM cache_entries WHERE path >= ? AND path < ? AND path > ? "
            "ORDER BY path LIMIT ?", (prefix, prefix + MAX_CHAR, after, limit)).fetchall()

    def pin_under(self, prefix: str, after: str, limit: int) -> tuple[int, str | None]:
        """Pin the entries under `prefix` of the next page of `limit` after `after`: how many
        were pinned now, and the page's last path (None: that was the last page)."""
        page = self._under(prefix, after, limit)
        self._conn.executemany(
            f"UPDATE cache_entries SET slot = ({_NEXT_PINNED}) WHERE path = ? AND slot >= 0",
            [(path,) for path, slot in page if slot >= 0])
        return sum(slot >= 0 for _, slot in page), page[-1][0] if len(page) == limit else None

    def unpin_under(self, prefix: str, keep: list[str], after: str,
                    limit: int) -> tuple[int, str | None]:
        """Unpin the entries under `prefix` that no prefix of `keep` covers, a page at a time
        (as `pin_under`)."""
        page = self._under(prefix, after, limit)
        free = [(path,) for path, slot in page
                if slot < 0 and not any(path.startswith(other) for other in keep)]
        self._conn.executemany(
            f"UPDATE cache_entries SET slot = ({_NEXT_FREE}) WHERE path = ? AND slot < 0", free)
        return len(free), page[-1][0] if len(page) == limit else None

    def pinned_under(self, prefix: str) -> tuple[int, int]:
        """The pinned entries under `prefix` and their bytes (a range of the index)."""
        count, size = self._conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM cache_entries WHERE path >= ? "
            "AND path < ? AND slot < 0", (prefix, prefix + MAX_CHAR)).fetchone()
        return int(count), int(size)

    def missing_under(self, prefix: str, after: str, limit: int) -> list[FileRecord]:
        """Files under `prefix` after `after` (path order, up to `limit`) that are in the
        cloud and have no cache entry: what a warm of `prefix` downloads (unless their bytes
        are kept local)."""
        rows = self._conn.execute(
            f"SELECT {_FILES_AS_F} FROM files f WHERE f.path >= ? AND f.path < ? AND f.path > ? "
            "AND f.location = 'remote' AND NOT EXISTS "
            "(SELECT 1 FROM cache_entries c WHERE c.path = f.path) ORDER BY f.path LIMIT ?",
            (prefix, prefix + MAX_CHAR, after, limit)).fetchall()
        return [FileRecord(*row) for row in rows]
