"""The cache's pins: path prefixes whose cache entries the GC never evicts (`cache/pins.py`).

A pin is a row of `cache_pins` (registry migration 10). Pins are few (an operator sets each),
so the question "is this path pinned?" reads them all; what lies under a pin is a range of a
primary key (files', or the cache index's), never a scan of a whole table. The entries under a
pin are marked by their slot's sign (see `cache.py`), and counted by triggers in
`cache.pinned.entries` / `cache.pinned.bytes`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from .counters import MAX_CHAR

PIN_LIMIT = "cache.pin_limit"


@dataclasses.dataclass(frozen=True)
class Pin:
    prefix: str
    created: float

    def public(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "created": self.created}


def outermost(prefixes: list[str]) -> list[str]:
    """The prefixes no other one covers ("a/" covers "a/b/"): what lies under them all, once."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


class PinRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def all(self) -> list[Pin]:
        rows = self._conn.execute("SELECT prefix, created FROM cache_pins ORDER BY prefix")
        return [Pin(*row) for row in rows.fetchall()]

    def get(self, prefix: str) -> Pin | None:
        row = self._conn.execute("SELECT prefix, created FROM cache_pins WHERE prefix = ?",
                                 (prefix,)).fetchone()
        return Pin(*row) if row else None

    def add(self, prefix: str, now: float) -> bool:
        """Pin `prefix`; False if it was pinned already."""
        return self._conn.execute(
            "INSERT INTO cache_pins (prefix, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (prefix, now)).rowcount > 0

    def remove(self, prefix: str) -> bool:
        return self._conn.execute("DELETE FROM cache_pins WHERE prefix = ?",
                                  (prefix,)).rowcount > 0

    def files_under(self, prefixes: list[str]) -> tuple[int, int]:
        """The files and bytes under any of `prefixes` (each counted once): a range of the
        files' primary key per outermost prefix."""
        files = size = 0
        for prefix in outermost(prefixes):
            count, total = self._conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM files WHERE path >= ? AND path < ?",
                (prefix, prefix + MAX_CHAR)).fetchone()
            files, size = files + count, size + total
        return files, size

    def limit(self) -> int:
        row = self._conn.execute("SELECT value FROM counters WHERE name = ?",
                                 (PIN_LIMIT,)).fetchone()
        return int(row[0]) if row else 0

    def set_limit(self, max_size: int) -> None:
        """Record `cache.max_size` for the entries that enter the cache pinned (see
        `CacheRows.add`); no write when it is the same."""
        self._conn.execute("UPDATE counters SET value = ? WHERE name = ? AND value != ?",
                           (max_size, PIN_LIMIT, max_size))
