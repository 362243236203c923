"""The registry's schema: numbered migrations, run in order at open (`PRAGMA user_version`).

Each migration creates what a capability added, so later ones never touch existing data. They run
under the data directory's start-up lock (see `datadir.py`). SQLite-only: counters are kept by
triggers in the same transaction as the change they count (a PostgreSQL backend needs the same
triggers in PL/pgSQL, numbered alike).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from .counters import CACHE_EVENTS, LOCATIONS


def _counting_triggers(db: sqlite_utils.Database, table: str, columns: str,
                       bump: Callable[[str, str], str]) -> None:
    """Keep counters in step with `table`: `bump(sign, row)` is the SQL that adds ("+") or
    removes ("-") the row `row` ("NEW" or "OLD") from them; it runs on every insert and delete,
    and on updates of `columns`."""
    db.executescript(
        f"""
        CREATE TRIGGER IF NOT EXISTS {table}_count_insert AFTER INSERT ON {table} BEGIN
          {bump('+', 'NEW')}
        END;
        CREATE TRIGGER IF NOT EXISTS {table}_count_delete AFTER DELETE ON {table} BEGIN
          {bump('-', 'OLD')}
        END;
        CREATE TRIGGER IF NOT EXISTS {table}_count_update AFTER UPDATE OF {columns} ON {table}
        BEGIN
          {bump('-', 'OLD')}
          {bump('+', 'NEW')}
        END;
        """
    )


def _migration_1(db: sqlite_utils.Database) -> None:
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

    _counting_triggers(db, "files", "size, location", bump)

def _migration_2(db: sqlite_utils.Database) -> None:
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

    _counting_triggers(db, "queue", "op, state", bump)

def _migration_3(db: sqlite_utils.Database) -> None:
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

    _counting_triggers(db, "cache_entries", "size", bump)
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


def _migration_4(db: sqlite_utils.Database) -> None:
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


def _migration_5(db: sqlite_utils.Database) -> None:
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


def _migration_6(db: sqlite_utils.Database) -> None:
    """Admin sessions that can end before their cookie does (`sessions.py`: one row per
    session, keyed by the hash of its id, and the generation "sign out everywhere" moves), and
    the nonces of single-use signed URLs (`grants.py`)."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS sessions (
          id TEXT PRIMARY KEY,            -- SHA-256 (hex) of the id the cookie carries
          generation INTEGER NOT NULL,    -- counts while it is counters' sessions.generation
          created REAL NOT NULL,
          expires REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS grants (
          nonce TEXT PRIMARY KEY,         -- a --once URL's `once=`, under its signature
          expires REAL NOT NULL,          -- the URL's expiry: pruned an hour after it
          claimed REAL NOT NULL,          -- when a request took it
          spent REAL                      -- when that request succeeded; NULL while it runs
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS grants_expires ON grants (expires);
        INSERT OR IGNORE INTO counters (name, value) VALUES ('sessions.generation', 0);
        """
    )


# The account a path belongs to (its first segment), in SQL: "" for a path with no "/".
_ACCOUNT_OF = "substr({row}.path, 1, instr({row}.path, '/') - 1)"


def _migration_7(db: sqlite_utils.Database) -> None:
    """Accounts (`accounts.py`): each owns the path prefix `ID/`, with its tokens (stored as
    hashes) and its usage, counted by triggers in the same transaction as the change:
    `account.ID.files`, `.bytes`, `.local.bytes`, `.remote.NAME.bytes` (and `.uploads`, by
    `FileRows.mark_uploaded`). A path's account is its first segment, if that names one."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS accounts (
          id TEXT PRIMARY KEY,              -- [a-z0-9][a-z0-9-]{0,62}: owns the prefix "id/"
          name TEXT NOT NULL,
          created REAL NOT NULL,
          state TEXT NOT NULL DEFAULT 'active',  -- 'active' | 'suspended'
          quota INTEGER NOT NULL DEFAULT 0  -- bytes the account may hold; 0: no limit
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS account_tokens (
          hash TEXT PRIMARY KEY,            -- SHA-256 (hex) of the token: never the token
          account TEXT NOT NULL,
          name TEXT NOT NULL,
          created REAL NOT NULL,
          last_used REAL,                   -- written at most once a minute per process
          UNIQUE (account, name)
        ) WITHOUT ROWID;
        """
    )

    def bump(sign: str, row: str) -> str:
        account = _ACCOUNT_OF.format(row=row)
        prefix = f"'account.' || {account} || '."
        return (
            "INSERT INTO counters (name, value) VALUES "
            f"({prefix}files', {sign}1), ({prefix}bytes', {sign}{row}.size), "
            f"({prefix}' || {row}.location || '.bytes', {sign}{row}.size) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;\n"
            "  INSERT INTO counters (name, value) SELECT "
            f"{prefix}remote.' || {row}.remote || '.bytes', {sign}{row}.size "
            f"WHERE {row}.location = 'remote' AND {row}.remote IS NOT NULL "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;"
        )

    def owned(row: str) -> str:
        account = _ACCOUNT_OF.format(row=row)
        return (f"instr({row}.path, '/') > 0 AND EXISTS "
                f"(SELECT 1 FROM accounts WHERE id = {account})")

    db.executescript(
        f"""
        CREATE TRIGGER IF NOT EXISTS files_account_insert AFTER INSERT ON files
        WHEN {owned('NEW')} BEGIN {bump('+', 'NEW')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_delete AFTER DELETE ON files
        WHEN {owned('OLD')} BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_update_old
        AFTER UPDATE OF size, location, remote ON files WHEN {owned('OLD')}
        BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_update_new
        AFTER UPDATE OF size, location, remote ON files WHEN {owned('NEW')}
        BEGIN {bump('+', 'NEW')} END;
        """
    )


def _migration_8(db: sqlite_utils.Database) -> None:
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
        for statement in _MIGRATION_8:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


_MIGRATION_8 = [
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


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6,
    _migration_7, _migration_8,
]
SCHEMA_VERSION = len(MIGRATIONS)
SETTINGS_SCHEMA = 4  # the version that added saved settings (and move jobs)

