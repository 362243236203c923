"""Migrations 1-5: the single node's files, queue, cache, jobs, settings and counters."""

from __future__ import annotations

import sqlite_utils

from ..counters import CACHE_EVENTS, LOCATIONS
from .triggers import counting_triggers


def migration_1(db: sqlite_utils.Database) -> None:
    db.table("files").create(
        {
            "path": str,
            "size": int,
            "sha256": str,
            "content_type": str,
            "created": float,
            "modified": float,
            "location": str,
            "version": int,
            "inode": int,
            # Filled by the upload queue: which remote holds the file, under which key.
            "remote": str,
            "remote_key": str,
            "remote_etag": str,
            "uploaded_at": float,
        },
        pk="path",
        not_null={"size", "sha256", "content_type", "created", "modified", "location", "version"},
        defaults={"location": "local", "version": 1},
        if_not_exists=True,
    )
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null={"value"},
                          if_not_exists=True)
    kinds = ("files", "bytes")
    # seq.version: the last file version handed out; versions are unique across all paths, so
    # a version number can never describe both a deleted file and a later one at the same path.
    names = [*kinds, *(f"{kind}.{loc}" for loc in LOCATIONS for kind in kinds), "seq.version"]
    db.table("counters").insert_all(({"name": n, "value": 0} for n in names), ignore=True)
    db.table("intents").create(
        {"id": int, "op": str, "path": str, "tmp": str, "size": int, "sha256": str,
         "content_type": str, "created": float},
        pk="id",
        if_not_exists=True,
    )
    db.table("intents").create_index(["path"], if_not_exists=True)
    # `bump` adds (files, bytes) for one row to the total and to its location's counters.
    def bump(sign: str, row: str) -> str:
        return (
            f"UPDATE counters SET value = value {sign} 1 "
            f"WHERE name IN ('files', 'files.' || {row}.location);\n"
            f"  UPDATE counters SET value = value {sign} {row}.size "
            f"WHERE name IN ('bytes', 'bytes.' || {row}.location);"
        )

    counting_triggers(db, "files", "size, location", bump)

def migration_2(db: sqlite_utils.Database) -> None:
    """The remote-work queue: one row per path, an upload or a remote delete (see queue/)."""
    db.table("queue").create(
        {
            "path": str,
            "op": str,  # "upload" | "delete"
            # files.version the upload is for, or the version whose remote copy goes.
            "version": int,
            "remote": str,  # the remote's name
            "not_before": float,  # due time: the end of the cool-down, or of a retry backoff
            "attempts": int,
            "state": str,  # "pending" | "failed"
            "leased_until": float,  # a worker holds the row until then (NULL: free)
            "lease_owner": str,
            "last_error": str,
            "created": float,
            "updated": float,
        },
        pk="path",
        not_null={"op", "version", "remote", "not_before", "attempts", "state"},
        defaults={"attempts": 0, "state": "pending"},
        if_not_exists=True,
    )
    db.table("queue").create_index(["state", "not_before"], if_not_exists=True)
    db.table("queue").create_index(["leased_until"], if_not_exists=True)
    names = [f"queue.{op}.{state}" for op in ("upload", "delete")
             for state in ("pending", "failed")] + ["uploads.done", "uploads.bytes"]
    db.table("counters").insert_all(({"name": n, "value": 0} for n in names), ignore=True)

    def bump(sign: str, row: str) -> str:
        return (f"UPDATE counters SET value = value {sign} 1 "
                f"WHERE name = 'queue.' || {row}.op || '.' || {row}.state;")

    counting_triggers(db, "queue", "op, state", bump)

def migration_3(db: sqlite_utils.Database) -> None:
    """The cache index (see cache.py) and the cache's statistics."""
    db.table("cache_entries").create(
        {
            "path": str,
            "version": int,  # files.version whose bytes the entry holds
            "size": int,
            "sha256": str,
            "last_access": float,
            # 0..entries-1 with no holes, so eviction can draw entries uniformly at random.
            "slot": int,
        },
        pk="path",
        not_null={"version", "size", "sha256", "last_access", "slot"},
        if_not_exists=True,
    )
    db.table("cache_entries").create_index(["slot"], unique=True, if_not_exists=True)
    # Keep the slots dense: the entry in the last slot moves into the one a delete frees.
    db.executescript(
        """
        CREATE TRIGGER IF NOT EXISTS cache_entries_fill_slot AFTER DELETE ON cache_entries
        BEGIN
          UPDATE cache_entries SET slot = OLD.slot
          WHERE slot = (SELECT max(slot) FROM cache_entries) AND slot > OLD.slot;
        END;
        """
    )
    # Why the last read of a file from the cloud failed (its object is missing, say).
    db.table("files").add_column("last_error", str)
    names = ["cache.entries", "cache.bytes", *(f"cache.{name}" for name in CACHE_EVENTS)]
    db.table("counters").insert_all(({"name": n, "value": 0} for n in names), ignore=True)

    def bump(sign: str, row: str) -> str:
        return (f"UPDATE counters SET value = value {sign} 1 WHERE name = 'cache.entries';\n"
                f"  UPDATE counters SET value = value {sign} {row}.size "
                "WHERE name = 'cache.bytes';")

    counting_triggers(db, "cache_entries", "size", bump)
    # An entry holds one version of one file: it goes with the file, or when the file changes,
    # so the index can never describe bytes of a deleted or replaced file.
    db.executescript(
        """
        CREATE TRIGGER IF NOT EXISTS files_uncache_delete AFTER DELETE ON files BEGIN
          DELETE FROM cache_entries WHERE path = OLD.path;
        END;
        CREATE TRIGGER IF NOT EXISTS files_uncache_update AFTER UPDATE OF version ON files
        WHEN NEW.version != OLD.version BEGIN
          DELETE FROM cache_entries WHERE path = NEW.path;
        END;
        """
    )


def migration_4(db: sqlite_utils.Database) -> None:
    """Settings saved from the admin page, move jobs, and what the page asks of the queue."""
    db.table("settings").create(
        {"section": str, "key": str, "value": str, "updated": float},
        pk=("section", "key"), not_null={"value"}, if_not_exists=True,
    )
    db.table("jobs").create(
        {
            "id": int,
            "kind": str,  # "move-to-cloud" | "move-to-local"
            "state": str,  # "queued" | "running" | "done" | "failed" | "cancelled"
            "options": str,  # JSON: the job's choices (move-to-local: delete the remote copies)
            "total": int,  # files the job takes on (grows while it scans)
            "total_bytes": int,
            "done": int,  # files finished (moved, or no longer needing it: replaced, deleted)
            "bytes": int,  # bytes moved
            "errors": int,  # files that failed (a move-to-cloud file failed for good)
            "last_error": str,
            "cursor": str,  # the last path scanned: a restarted job resumes after it
            "scanned": int,  # 1 once the scan reached the end
            "created": float,
            "updated": float,
            "finished": float,
            "leased_until": float,  # the process running it holds it until then
            "lease_owner": str,
        },
        pk="id",
        not_null={"kind", "state", "total", "total_bytes", "done", "bytes", "errors", "cursor",
                  "scanned", "created", "updated"},
        defaults={"state": "queued", "options": "{}", "total": 0, "total_bytes": 0, "done": 0,
                  "bytes": 0, "errors": 0, "cursor": "", "scanned": 0},
        if_not_exists=True,
    )
    db.table("jobs").create_index(["state"], if_not_exists=True)
    # A move-to-cloud job tags the queue rows it made due: `job` names it, `job_prior_due` keeps
    # the cool-down the row had before (NULL: the job created the row) and `job_prior_op` the
    # remote delete it replaced, so a cancel can undo it.
    db.table("queue").add_column("job", int)
    db.table("queue").add_column("job_prior_due", float)
    db.table("queue").add_column("job_prior_op", str)  # "delete": the job replaced one
    db.executescript(
        """
        CREATE INDEX IF NOT EXISTS queue_job ON queue (job) WHERE job IS NOT NULL;
        -- The page's "recent errors": rows that failed at least once, newest first.
        CREATE INDEX IF NOT EXISTS queue_errors ON queue (updated) WHERE last_error IS NOT NULL;
        -- The page's failed uploads, a page at a time in path order.
        CREATE INDEX IF NOT EXISTS queue_failed ON queue (path) WHERE state = 'failed';
        -- The page's "due now" and "cooling down" counts of uploads, from the index alone
        -- (with op outside the index, each counted row cost a table lookup: 55 ms at 1M files).
        CREATE INDEX IF NOT EXISTS queue_state_op_due ON queue (state, op, not_before);
        -- A job's figures move while it runs and stay as they were once it ended.
        -- A tagged row that leaves the queue is done for its job: uploaded (its bytes count),
        -- or no longer wanted (deleted, dropped).
        CREATE TRIGGER IF NOT EXISTS queue_job_finished AFTER DELETE ON queue
        WHEN OLD.job IS NOT NULL BEGIN
          UPDATE jobs SET done = done + 1, errors = errors - (OLD.state = 'failed'),
            bytes = bytes + COALESCE((SELECT size FROM files WHERE path = OLD.path
                                      AND version = OLD.version AND location = 'remote'), 0)
          WHERE id = OLD.job AND state IN ('queued', 'running');
        END;
        -- Untagged while still queued: new work replaced it (a re-PUT, a DELETE).
        CREATE TRIGGER IF NOT EXISTS queue_job_left AFTER UPDATE OF job ON queue
        WHEN OLD.job IS NOT NULL AND NEW.job IS NULL BEGIN
          UPDATE jobs SET done = done + 1, errors = errors - (OLD.state = 'failed')
          WHERE id = OLD.job AND state IN ('queued', 'running');
        END;
        CREATE TRIGGER IF NOT EXISTS queue_job_failed AFTER UPDATE OF state ON queue
        WHEN NEW.job IS NOT NULL AND OLD.job = NEW.job AND OLD.state != NEW.state BEGIN
          UPDATE jobs SET errors = errors + (NEW.state = 'failed') - (OLD.state = 'failed')
          WHERE id = NEW.job AND state IN ('queued', 'running');
        END;
        """
    )
    # settings.generation: bumped by every save; remote.generation: by saves that change the
    # remote, so every process reloads, and an upload that began before a change is not
    # recorded against the new remote.
    names = ["settings.generation", "remote.generation"]
    db.table("counters").insert_all(({"name": n, "value": 0} for n in names), ignore=True)


def migration_5(db: sqlite_utils.Database) -> None:
    """Files and bytes in the cloud per remote (storage plans send files to several): counters
    named by `remote_counter_names`, created by the first file a remote receives. And each
    file's MD5, which a PUT computes anyway: an upload compares it with the store's ETag."""
    db.table("files").add_column("md5", str)
    def bump(sign: str, row: str) -> str:
        return (
            f"INSERT INTO counters (name, value) VALUES ('files.remote.' || {row}.remote, "
            f"{sign}1), ('bytes.remote.' || {row}.remote, {sign}{row}.size) "
            f"ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;"
        )

    counted = "{row}.location = 'remote' AND {row}.remote IS NOT NULL"
    new, old = counted.format(row="NEW"), counted.format(row="OLD")
    db.executescript(
        f"""
        CREATE TRIGGER IF NOT EXISTS files_remote_count_insert AFTER INSERT ON files
        WHEN {new} BEGIN {bump('+', 'NEW')} END;
        CREATE TRIGGER IF NOT EXISTS files_remote_count_delete AFTER DELETE ON files
        WHEN {old} BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_remote_count_update_old
        AFTER UPDATE OF size, location, remote ON files WHEN {old} BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_remote_count_update_new
        AFTER UPDATE OF size, location, remote ON files WHEN {new} BEGIN {bump('+', 'NEW')} END;
        INSERT INTO counters (name, value)
          SELECT 'files.remote.' || remote, count(*) FROM files
          WHERE location = 'remote' AND remote IS NOT NULL GROUP BY remote
          UNION ALL
          SELECT 'bytes.remote.' || remote, sum(size) FROM files
          WHERE location = 'remote' AND remote IS NOT NULL GROUP BY remote
        ON CONFLICT (name) DO UPDATE SET value = excluded.value;
        -- The remotes files name, one seek each (a start-up check, see plan.py).
        CREATE INDEX IF NOT EXISTS files_remote ON files (remote) WHERE remote IS NOT NULL;
        -- Every upload so far went to the only remote there was.
        INSERT OR IGNORE INTO counters (name, value)
          SELECT 'uploads.done.default', value FROM counters WHERE name = 'uploads.done'
          UNION ALL
          SELECT 'uploads.bytes.default', value FROM counters WHERE name = 'uploads.bytes';
        """
    )
