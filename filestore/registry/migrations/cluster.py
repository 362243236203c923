"""Migration 13: nodes (`cluster.py`) and the holder of a file's local bytes."""

from __future__ import annotations

import sqlite_utils


def migration_13(db: sqlite_utils.Database) -> None:
    """The `nodes` table: every node sharing the registry writes its row (name, the URL its
    peers reach it on, when it started, its last heartbeat). `files.holder`: the node whose
    disk holds the file's local bytes, `files.replica` the other node holding a copy of them
    (`cluster.replicas`); "" here: a SQLite registry has one node, the data directory's.
    `stale_bytes`: bytes a node must drop because a change on another node
    superseded them; in SQLite no other node exists, so nothing fills it (the PostgreSQL
    twin's triggers do). Idempotent: a crash before `user_version` moves only runs it again."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS nodes (
          name TEXT PRIMARY KEY,
          url TEXT NOT NULL,               -- where its peers reach it (cluster.advertise)
          started REAL NOT NULL,
          heartbeat REAL NOT NULL          -- seconds since the epoch
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS stale_bytes (
          node TEXT NOT NULL,
          path TEXT NOT NULL,
          PRIMARY KEY (node, path)
        ) WITHOUT ROWID;
        """
    )
    columns = db.table("files").columns_dict
    if "holder" not in columns:
        db.execute("ALTER TABLE files ADD COLUMN holder TEXT NOT NULL DEFAULT ''")
    if "replica" not in columns:  # the other node holding them too (cluster.replicas)
        db.execute("ALTER TABLE files ADD COLUMN replica TEXT NOT NULL DEFAULT ''")
