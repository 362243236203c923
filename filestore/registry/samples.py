"""Samples of the statistics, for the admin page's charts: a ring buffer of one row per interval.

Each row holds the cumulative counters at one moment (`Sample`); the charts take rates from the
difference of neighbours. The row of an interval is keyed by its number (`slot`), and the first
process to write it wins (`ON CONFLICT DO NOTHING`): however many server processes sample, each
interval has one row, and every process draws the same charts. Rows older than the window go in
the same transaction as the next one, so the table holds one window's rows (360 for an hour of
10 s samples) and reading all of it is cheap.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple


class Sample(NamedTuple):
    slot: int  # the interval's number: floor(time / interval)
    time: float  # when it was taken
    uploads: int  # uploads done (verified), ever: `uploads.done`
    uploaded_bytes: int  # and their bytes: `uploads.bytes`
    sent_bytes: int | None  # body bytes of /files/ responses from every source (HTTP metrics)
    cache_bytes: int  # bytes served from the cache area: `cache.hit_bytes`
    cloud_bytes: int  # bytes downloaded from the cloud: `cache.remote_bytes`
    hits: int  # `cache.hits`
    misses: int  # `cache.misses`
    backlog: int  # uploads queued (cooling down or due): `queue.upload.pending`
    failed: int  # uploads that failed: `queue.upload.failed`
    at_risk_bytes: int  # bytes with no verified cloud copy yet: `unprotected.bytes`
    oldest_age: float | None  # seconds since the oldest of them was written; None: none


_COLUMNS = ", ".join(Sample._fields)
_PLACES = ", ".join("?" for _ in Sample._fields)


class SampleRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def has(self, slot: int) -> bool:
        """Whether the interval `slot` has its row already (one primary-key lookup)."""
        return self._conn.execute("SELECT 1 FROM samples WHERE slot = ?",
                                  (slot,)).fetchone() is not None

    def add(self, sample: Sample, keep_after: float) -> bool:
        """Write `sample` unless its interval has a row already (whether it was written), and
        forget the rows taken at or before `keep_after`."""
        inserted = self._conn.execute(
            f"INSERT INTO samples ({_COLUMNS}) VALUES ({_PLACES}) "
            "ON CONFLICT (slot) DO NOTHING", sample).rowcount
        # By time, not slot: rows of another interval (a test's, an older setting) go too.
        self._conn.execute("DELETE FROM samples WHERE time <= ?", (keep_after,))
        return inserted > 0

    def since(self, after: float) -> list[Sample]:
        """The samples taken after `after`, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM samples WHERE time > ? ORDER BY time", (after,))
        return [Sample(*row) for row in rows]
