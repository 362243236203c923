"""Migration 9: the storage accounts configure for themselves (`account_storage.py`)."""

from __future__ import annotations

import sqlite_utils


def migration_9(db: sqlite_utils.Database) -> None:
    """One row per account that set remotes or plan rules of its own: both as JSON, the
    remotes' secrets encrypted in it (`secrets.py`). Saving one moves the settings generations,
    so every process lays the change over its settings within a second."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS account_storage (
          account TEXT PRIMARY KEY,       -- accounts.id (removed with it)
          remotes TEXT NOT NULL,          -- {"NAME": {"url": ..., "secret_access_key": "enc:..."}}
          plan TEXT NOT NULL,             -- [{"prefix": ..., "remote": ...}, ...]
          updated REAL NOT NULL
        ) WITHOUT ROWID;
        """
    )
