"""Migration 8 in PostgreSQL: the data-at-risk figures (queue rows mirror their file's size and
time, `unprotected.bytes` counts the upload rows' bytes; see `registry/migrations/at_risk.py`)."""

from __future__ import annotations

from .triggers import REAL, on


def migration_8() -> list[str]:
    unprotected = "UPDATE counters SET value = value {sign} COALESCE({row}.size, 0) " \
                  "WHERE name = 'unprotected.bytes';"
    return [
        "ALTER TABLE queue ADD COLUMN size bigint",
        f"ALTER TABLE queue ADD COLUMN written {REAL}",
        # The mirror, filled once, then kept by the triggers below (created after it).
        "UPDATE queue SET (size, written) = (SELECT size, modified FROM files "
        "WHERE files.path = queue.path)",
        "INSERT INTO counters (name, value) SELECT 'unprotected.bytes', "
        "COALESCE(SUM(size), 0) FROM queue WHERE op = 'upload' "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        "CREATE INDEX queue_unprotected ON queue (written) WHERE op = 'upload'",
        "CREATE INDEX queue_failed_since ON queue (op, updated) WHERE state = 'failed'",
        *on("queue_mirror_insert", "INSERT", "queue",
            "UPDATE queue SET (size, written) = (SELECT size, modified FROM files "
            "WHERE path = NEW.path) WHERE path = NEW.path;"),
        *on("files_mirror_insert", "INSERT", "files",
            "UPDATE queue SET size = NEW.size, written = NEW.modified WHERE path = NEW.path;"),
        *on("files_mirror_update", "UPDATE OF size, modified", "files",
            "UPDATE queue SET size = NEW.size, written = NEW.modified WHERE path = NEW.path;"),
        *on("files_mirror_delete", "DELETE", "files",
            "UPDATE queue SET size = NULL, written = NULL WHERE path = OLD.path;"),
        *on("queue_unprotected_insert", "INSERT", "queue",
            unprotected.format(sign="+", row="NEW"), "NEW.op = 'upload'"),
        *on("queue_unprotected_delete", "DELETE", "queue",
            unprotected.format(sign="-", row="OLD"), "OLD.op = 'upload'"),
        *on("queue_unprotected_update", "UPDATE OF op, size", "queue",
            "UPDATE counters SET value = value "
            "- CASE WHEN OLD.op = 'upload' THEN COALESCE(OLD.size, 0) ELSE 0 END "
            "+ CASE WHEN NEW.op = 'upload' THEN COALESCE(NEW.size, 0) ELSE 0 END "
            "WHERE name = 'unprotected.bytes';", "OLD.op = 'upload' OR NEW.op = 'upload'"),
    ]
