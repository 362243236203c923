"""The registry: one SQLite database (WAL) that knows every file, where it is and how much there is.

Connections. Each process has one writer connection, guarded by a lock, and every write is one
`BEGIN IMMEDIATE` transaction on it, so writers queue on SQLite's own lock across processes instead
of failing with "database is locked". Reads use a second, read-only connection that is only ever
used from the event loop's thread: a primary-key lookup costs a few microseconds, far less than the
thread hop that would otherwise carry it, and WAL readers never wait for the writer.

Counters (files and bytes, in all and by location) are kept by triggers, in the same transaction
as the change they count, so statistics never scan a table and can never drift from it.

Schema changes are numbered migrations (`PRAGMA user_version`), run at open under the data
directory's start-up lock (see `datadir.py`), so later capabilities add tables without touching
existing data.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from .errors import InsufficientStorage
from .fsutil import fsync_dir

LOCATIONS = ("local", "remote")
# Above any character a valid UTF-8 path can hold: `prefix + _MAX_CHAR` bounds a prefix range scan.
_MAX_CHAR = "\U0010ffff"


@dataclasses.dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str
    content_type: str
    created: float
    modified: float
    location: str = "local"
    # Bumped by every PUT of the path, so work started for an older version can tell it is stale.
    version: int = 1
    # Inode of the local file this row describes: a reader that opened a file with another inode
    # raced a concurrent replacement and looks the row up again (see api.py).
    inode: int = 0
    remote: str | None = None  # the remote's name, once uploaded
    # Hex MD5 of the bytes, taken while they were received (None: recorded without one, by
    # recovery or before migration 5): an upload compares it with the store's ETag.
    md5: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "modified": self.modified,
            "location": self.location,
        }


@dataclasses.dataclass(frozen=True)
class Intent:
    """A PUT in flight: temp file `tmp` is about to replace `path`. Recorded before the rename,
    removed in the transaction that records the new bytes (see store.py). Or, with `op`
    "delete", a DELETE between its two steps: the row is gone and the bytes are going."""

    id: int
    op: str
    path: str
    tmp: str
    size: int
    sha256: str
    content_type: str


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
    """The cache index (see cache/index.py) and the cache's statistics."""
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


class RemoteCounters(NamedTuple):
    files: str  # files recorded in the remote (in the cloud there)
    bytes: str  # and their bytes
    uploads: str  # uploads to it done (verified), ever
    uploaded_bytes: str  # and their bytes


def remote_counter_names(remote: str) -> RemoteCounters:
    """The names of a remote's counters."""
    return RemoteCounters(f"files.remote.{remote}", f"bytes.remote.{remote}",
                          f"uploads.done.{remote}", f"uploads.bytes.{remote}")


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


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
]
SCHEMA_VERSION = len(MIGRATIONS)

_FILE_COLUMNS = (
    "path, size, sha256, content_type, created, modified, location, version, inode, remote, md5"
)


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write names its own BEGIN IMMEDIATE.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    if read_only:
        conn.execute("PRAGMA query_only = 1")
    else:
        # FULL: an acknowledged PUT survives a power cut, not only a killed process.
        conn.execute("PRAGMA synchronous = FULL")
    return conn


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _connect(path, read_only=False)
        sqlite_utils.Database(self._writer).enable_wal()
        self._write_lock = threading.Lock()
        # Read-only, for the event loop's thread only (see the module docstring).
        self.reader = self.open_reader()

    def open_reader(self) -> sqlite3.Connection:
        """Another read-only connection, for a thread of its own (the caller closes it)."""
        return _connect(self.path, read_only=True)

    # -- schema ---------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`. Call only under the data directory's start lock."""
        db = sqlite_utils.Database(self._writer)
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the registry has schema version {version}, newer than this filestore "
                f"({SCHEMA_VERSION}); upgrade filestore"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[number - 1](db)
            self._writer.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self.reader.close()
        self._writer.close()

    def backup(self, target: Path) -> None:
        """A consistent copy of the registry at `target`, safe while servers write to it:
        SQLite's online backup in one step reads one snapshot (WAL readers never block the
        writers), into a temp file that is fsynced and renamed into place."""
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        copy = sqlite3.connect(tmp)
        try:
            self.reader.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            copy.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: `BEGIN IMMEDIATE` takes SQLite's write lock up front."""
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                self._writer.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    raise InsufficientStorage("the data directory's disk is full") from None
                raise
            except BaseException:
                # Also after a failed COMMIT, which can leave the transaction (and SQLite's
                # write lock, which every process needs) open.
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise

    def add_intent(self, op: str, path: str, tmp: str = "", size: int = 0, sha256: str = "",
                   content_type: str = "") -> int:
        with self.transaction() as conn:
            return self.record_intent(conn, op, path, tmp, size, sha256, content_type)

    @staticmethod
    def record_intent(conn: sqlite3.Connection, op: str, path: str, tmp: str = "",
                      size: int = 0, sha256: str = "", content_type: str = "") -> int:
        """An intent, in the caller's transaction."""
        cursor = conn.execute(
            "INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (op, path, tmp, size, sha256, content_type, time.time()),
        )
        return int(cursor.lastrowid or 0)

    @staticmethod
    def remove_intent(conn: sqlite3.Connection, intent_id: int) -> None:
        conn.execute("DELETE FROM intents WHERE id = ?", (intent_id,))

    @staticmethod
    def upsert_file(conn: sqlite3.Connection, path: str, size: int, sha256: str,
                    content_type: str, inode: int, now: float,
                    md5: str | None = None) -> tuple[bool, int]:
        """Record new content for `path`: (whether the path is new, its new version).

        Run inside `transaction()`."""
        version = conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'seq.version' RETURNING value"
        ).fetchone()[0]
        row = conn.execute("SELECT created FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO files (path, size, sha256, content_type, created, modified, "
                "location, version, inode, md5) VALUES (?, ?, ?, ?, ?, ?, 'local', ?, ?, ?)",
                (path, size, sha256, content_type, now, now, version, inode, md5),
            )
            return True, version
        # A replaced file is local again: its new bytes have not been uploaded anywhere. `remote`
        # and `remote_key` stay: the remote still holds the old copy, which a DELETE must remove.
        conn.execute(
            "UPDATE files SET size = ?, sha256 = ?, content_type = ?, modified = ?, inode = ?, "
            "location = 'local', version = ?, remote_etag = NULL, uploaded_at = NULL, "
            "last_error = NULL, md5 = ? "
            "WHERE path = ?",
            (size, sha256, content_type, now, inode, version, md5, path),
        )
        return False, version

    @staticmethod
    def mark_uploaded(conn: sqlite3.Connection, path: str, remote: str, key: str, etag: str,
                      size: int, now: float) -> None:
        conn.execute(
            "UPDATE files SET location = 'remote', remote = ?, remote_key = ?, remote_etag = ?, "
            "uploaded_at = ? WHERE path = ?",
            (remote, key, etag, now, path),
        )
        names = remote_counter_names(remote)
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            [("uploads.done", 1), ("uploads.bytes", size),
             (names.uploads, 1), (names.uploaded_bytes, size)])

    @staticmethod
    def set_inode(conn: sqlite3.Connection, path: str, inode: int) -> None:
        """The row's bytes now live in another file (a cache fill installed them)."""
        conn.execute("UPDATE files SET inode = ? WHERE path = ?", (inode, path))

    @staticmethod
    def mark_local(conn: sqlite3.Connection, path: str, inode: int) -> None:
        """Moved back from the cloud: the row describes local bytes (`inode`) again. `remote`
        and `remote_key` stay while the cloud still holds the copy."""
        conn.execute("UPDATE files SET location = 'local', inode = ?, remote_etag = NULL, "
                     "uploaded_at = NULL, last_error = NULL WHERE path = ?", (inode, path))

    @staticmethod
    def forget_remote_copy(conn: sqlite3.Connection, path: str, version: int,
                           remote: str) -> None:
        """The copy of a local file in `remote` was deleted."""
        conn.execute("UPDATE files SET remote = NULL, remote_key = NULL WHERE path = ? "
                     "AND version = ? AND location = 'local' AND remote = ?",
                     (path, version, remote))

    @staticmethod
    def move_remote_copy(conn: sqlite3.Connection, path: str, old: str, new: str) -> None:
        """The older copy in `old` is gone (or kept, unrecorded): the upload starting now may
        leave a copy in `new`, the only remote the row can name."""
        conn.execute("UPDATE files SET remote = ?, remote_key = NULL WHERE path = ? "
                     "AND (remote = ? OR remote IS NULL)", (new, path, old))

    @staticmethod
    def note_possible_copy(conn: sqlite3.Connection, path: str, remote: str) -> None:
        """An upload of `path` to `remote` is starting: the remote may hold a copy from now on."""
        conn.execute("UPDATE files SET remote = ? WHERE path = ? AND remote IS NULL",
                     (remote, path))

    @staticmethod
    def note_remote_copy(conn: sqlite3.Connection, path: str, remote: str,
                         key: str | None) -> None:
        """The remote holds some copy of `path` (an upload of a version since replaced)."""
        conn.execute("UPDATE files SET remote = ?, remote_key = ? WHERE path = ?",
                     (remote, key, path))

    @staticmethod
    def namespace_conflict(conn: sqlite3.Connection, path: str) -> str | None:
        """Why `path` cannot be a file next to the registered ones, or None. Local bytes live
        under their paths in two trees (`files/`, `cache/`), so the registry, which knows them
        all, is where a file-versus-directory clash is caught."""
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if parents:
            marks = ", ".join("?" * len(parents))
            row = conn.execute(f"SELECT path FROM files WHERE path IN ({marks}) LIMIT 1",
                               parents).fetchone()
            if row:
                return f"{row[0]!r} is a file, so it cannot be a directory of {path!r}"
        # '0' follows '/' in every collation SQLite uses here: the range is "path/..." exactly.
        row = conn.execute("SELECT path FROM files WHERE path >= ? AND path < ? LIMIT 1",
                           (path + "/", path + "0")).fetchone()
        if row:
            return f"{path!r} is a directory of other files (such as {row[0]!r})"
        return None

    @staticmethod
    def add_to_counters(conn: sqlite3.Connection, deltas: dict[str, int]) -> None:
        conn.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                         [(delta, name) for name, delta in deltas.items() if delta])

    @staticmethod
    def set_error(conn: sqlite3.Connection, path: str, version: int, error: str | None) -> None:
        """Record (or clear, with None) why reading this version from the cloud failed."""
        conn.execute("UPDATE files SET last_error = ? WHERE path = ? AND version = ?",
                     (error, path, version))

    @staticmethod
    def delete_file(conn: sqlite3.Connection, path: str) -> bool:
        return conn.execute("DELETE FROM files WHERE path = ?", (path,)).rowcount > 0

    # -- reads (event loop thread, or any thread in a CLI) --------------------------------------

    def get(self, path: str, conn: sqlite3.Connection | None = None) -> FileRecord | None:
        """The record for `path`; pass the writer's `conn` to read inside a write transaction."""
        row = (conn or self.reader).execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?", (path,)
        ).fetchone()
        return FileRecord(*row) if row else None

    def page(self, after: str, limit: int,
             conn: sqlite3.Connection | None = None) -> list[FileRecord]:
        """The next `limit` files after `after`, in path order (for scans in any thread)."""
        rows = (conn or self.reader).execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?",
            (after, limit),
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    def list_files(self, prefix: str = "", after: str = "",
                   limit: int = 100) -> list[FileRecord]:
        """Files whose path starts with `prefix`, in path order, strictly after `after`."""
        rows = self.reader.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE path >= ? AND path < ? AND path > ? "
            "ORDER BY path LIMIT ?",
            (prefix, prefix + _MAX_CHAR, after, limit),
        ).fetchall()
        return [FileRecord(*row) for row in rows]

    def counters(self) -> dict[str, int]:
        return dict(self.reader.execute("SELECT name, value FROM counters").fetchall())

    def intents(self) -> list[Intent]:
        rows = self.reader.execute(
            "SELECT id, op, path, tmp, size, sha256, content_type FROM intents ORDER BY id"
        ).fetchall()
        return [Intent(*row) for row in rows]
