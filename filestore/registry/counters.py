"""Counters: named integers kept in the same transaction as the change they count.

Files and bytes (in all, by location, by remote), the queue by op and state, uploads done, cache
entries and events, the version sequence and the settings generations. Statistics read these and
never scan a table. Most are moved by triggers (see `migrations.py`); the rest by the registry's
own writes (`FileRows.mark_uploaded`, `SettingRows.save`) and by batched adds (`add`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import NamedTuple

LOCATIONS = ("local", "remote")
# Above any character a valid UTF-8 path or name can hold: `prefix + MAX_CHAR` bounds a range
# scan of the primary key (paths, counter names).
MAX_CHAR = "\U0010ffff"

# What the cache counts, each a `cache.<name>` counter (added up in memory, written in batches).
CACHE_EVENTS = (
    "hits",  # reads of an uploaded file answered from the cache area
    "hit_bytes",  # the bytes those responses carried
    "misses",  # reads that had to go to the cloud
    "fills",  # downloads into the cache started
    "remote_bytes",  # bytes downloaded from the cloud, into the cache or straight through
    "passthrough",  # reads streamed straight from the cloud (too large to keep, far ranges)
    "evictions",  # entries dropped to stay within cache.max_size and cache.min_free
    "integrity_failures",  # downloads whose bytes did not match the recorded SHA-256
    "fill_errors",  # downloads that failed otherwise (missing object, stalled, unreachable)
)


class RemoteCounters(NamedTuple):
    files: str  # files recorded in the remote (in the cloud there)
    bytes: str  # and their bytes
    uploads: str  # uploads to it done (verified), ever
    uploaded_bytes: str  # and their bytes


def remote_counter_names(remote: str) -> RemoteCounters:
    """The names of a remote's counters."""
    return RemoteCounters(f"files.remote.{remote}", f"bytes.remote.{remote}",
                          f"uploads.done.{remote}", f"uploads.bytes.{remote}")


class CounterRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def all(self) -> dict[str, int]:
        return dict(self._conn.execute("SELECT name, value FROM counters").fetchall())

    def get(self, name: str) -> int:
        """One counter (0 if it was never created: a remote's, before its first file)."""
        row = self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def with_prefix(self, *prefixes: str) -> dict[str, int]:
        """The counters whose names start with any of `prefixes` (e.g. "files.remote.")."""
        found: dict[str, int] = {}
        for prefix in prefixes:
            # A range on the primary key: a seek, not a scan of the table.
            found.update(self._conn.execute(
                "SELECT name, value FROM counters WHERE name >= ? AND name < ?",
                (prefix, prefix + MAX_CHAR)).fetchall())
        return found

    def add(self, deltas: Mapping[str, int]) -> None:
        """Add to existing counters (in the caller's transaction)."""
        self._conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                               [(delta, name) for name, delta in deltas.items() if delta])
