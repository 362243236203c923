"""Migration 11: the statistics' samples the admin page's charts draw."""

from __future__ import annotations

import sqlite_utils


def migration_11(db: sqlite_utils.Database) -> None:
    """A small ring buffer of samples (`samples.py`): every interval (10 s) one server process
    writes the cumulative counters the charts need, keyed by the interval's number, so however
    many processes sample, each interval has one row; rows older than the charts' window (an
    hour) go in the same transaction. Rates come from the difference of two neighbours.
    Idempotent (`IF NOT EXISTS`)."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS samples (
          slot INTEGER PRIMARY KEY,        -- the interval's number: floor(time / interval)
          time REAL NOT NULL,              -- when it was taken (seconds since the epoch)
          uploads INTEGER NOT NULL,        -- counters: uploads.done
          uploaded_bytes INTEGER NOT NULL, -- uploads.bytes
          sent_bytes INTEGER,              -- body bytes of /files/ responses, every source
                                           -- (HTTP metrics); NULL where none are kept
          cache_bytes INTEGER NOT NULL,    -- cache.hit_bytes: served from the cache area
          cloud_bytes INTEGER NOT NULL,    -- cache.remote_bytes: downloaded from the cloud
          hits INTEGER NOT NULL,           -- cache.hits
          misses INTEGER NOT NULL,         -- cache.misses
          backlog INTEGER NOT NULL,        -- queue.upload.pending: uploads waiting or due
          failed INTEGER NOT NULL,         -- queue.upload.failed
          at_risk_bytes INTEGER NOT NULL,  -- unprotected.bytes: no verified cloud copy yet
          oldest_age REAL                  -- seconds since the oldest of those was written;
                                           -- NULL: nothing at risk
        );
        """
    )
