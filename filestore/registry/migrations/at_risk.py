"""Migration 8: the data-at-risk figures (queue rows mirror their file's size and time)."""

from __future__ import annotations

import sqlite_utils


def migration_8(db: sqlite_utils.Database) -> None:
    """Data at risk: the files whose upload is queued (op "upload", pending or failed) have no
    verified cloud copy of their current bytes yet. Each queue row mirrors its file's `size`
    and `modified` time (`size`, `written`; NULL while the file has no row), kept by triggers
    on both tables, so `unprotected.bytes` (the bytes of the upload rows) is a counter kept by
    triggers on the queue alone, and the oldest of them is one seek of `queue_unprotected`. A
    re-PUT rewrites the file's size and time, so both follow it while the row stays; the row
    leaving the queue (uploaded, dropped, turned into a remote delete) takes its bytes out.
    `queue_failed_since`: the longest-failed upload, one seek. In one transaction, and
    idempotent: a crash before `user_version` moves only runs it again."""
    columns = db.table("queue").columns_dict
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in (("size", "INTEGER"), ("written", "REAL")):
            if name not in columns:
                db.execute(f"ALTER TABLE queue ADD COLUMN {name} {kind}")
        for statement in _STATEMENTS:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


_STATEMENTS = [
    # The mirror, filled once, then kept by the triggers below (created after it, so that
    # filling it moves no counter).
    "UPDATE queue SET (size, written) = (SELECT size, modified FROM files "
    "WHERE files.path = queue.path)",
    "INSERT INTO counters (name, value) SELECT 'unprotected.bytes', COALESCE(SUM(size), 0) "
    "FROM queue WHERE op = 'upload' ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    # The oldest unprotected file, and the longest-failed upload: each one seek.
    "CREATE INDEX IF NOT EXISTS queue_unprotected ON queue (written) WHERE op = 'upload'",
    "CREATE INDEX IF NOT EXISTS queue_failed_since ON queue (op, updated) "
    "WHERE state = 'failed'",
    # A new row takes its file's size and time (an upsert that finds the row updates it, and
    # the row has them already).
    """CREATE TRIGGER IF NOT EXISTS queue_mirror_insert AFTER INSERT ON queue BEGIN
      UPDATE queue SET (size, written) = (SELECT size, modified FROM files
                                          WHERE path = NEW.path) WHERE path = NEW.path;
    END""",
    """CREATE TRIGGER IF NOT EXISTS files_mirror_insert AFTER INSERT ON files BEGIN
      UPDATE queue SET size = NEW.size, written = NEW.modified WHERE path = NEW.path;
    END""",
    # A re-PUT: new bytes, a new size and time, while the path's upload row stays.
    """CREATE TRIGGER IF NOT EXISTS files_mirror_update AFTER UPDATE OF size, modified ON files
    BEGIN
      UPDATE queue SET size = NEW.size, written = NEW.modified WHERE path = NEW.path;
    END""",
    # A DELETE goes before its queue row is rewritten (into a remote delete) or dropped.
    """CREATE TRIGGER IF NOT EXISTS files_mirror_delete AFTER DELETE ON files BEGIN
      UPDATE queue SET size = NULL, written = NULL WHERE path = OLD.path;
    END""",
    """CREATE TRIGGER IF NOT EXISTS queue_unprotected_insert AFTER INSERT ON queue
    WHEN NEW.op = 'upload' BEGIN
      UPDATE counters SET value = value + COALESCE(NEW.size, 0)
      WHERE name = 'unprotected.bytes';
    END""",
    """CREATE TRIGGER IF NOT EXISTS queue_unprotected_delete AFTER DELETE ON queue
    WHEN OLD.op = 'upload' BEGIN
      UPDATE counters SET value = value - COALESCE(OLD.size, 0)
      WHERE name = 'unprotected.bytes';
    END""",
    # An upload turned into a remote delete (or back), or its file's size changed.
    """CREATE TRIGGER IF NOT EXISTS queue_unprotected_update AFTER UPDATE OF op, size ON queue
    WHEN OLD.op = 'upload' OR NEW.op = 'upload' BEGIN
      UPDATE counters SET value = value
        - CASE WHEN OLD.op = 'upload' THEN COALESCE(OLD.size, 0) ELSE 0 END
        + CASE WHEN NEW.op = 'upload' THEN COALESCE(NEW.size, 0) ELSE 0 END
      WHERE name = 'unprotected.bytes';
    END""",
]
