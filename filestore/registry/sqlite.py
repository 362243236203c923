"""The SQLite registry: one database file (WAL) in the data directory, the default backend.

Connections. Each process has one writer connection, guarded by a lock, and every write is one
`BEGIN IMMEDIATE` transaction on it, so writers queue on SQLite's own lock across processes instead
of failing with "database is locked". Reads go through `read`, a read-only connection used only
from the event loop's thread: a primary-key lookup costs a few microseconds, far less than the
thread hop that would otherwise carry it, and WAL readers never wait for the writer. A thread that
reads on its own takes `open_reader()`.

SQLite-only, with no twin in a PostgreSQL backend (see `interface.py`): `BEGIN IMMEDIATE` (there:
a transaction that takes its row locks, `SELECT ... FOR UPDATE`), counters and the cache's dense
slots kept by triggers, `PRAGMA user_version` for the schema version, `PRAGMA query_only` for
read-only connections, `INDEXED BY` on the failed-uploads page, the online backup API.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import sqlite_utils

from ..errors import ConfigError, InsufficientStorage
from ..fsutil import fsync_dir
from .account_storage import StorageRows
from .accounts import AccountRows, TokenRows
from .cache import CacheRows
from .counters import CounterRows
from .files import FileRows, IntentRows
from .grants import GrantRows
from .jobs import JobRows
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .nodes import NodeRows, StaleRows
from .pins import PinRows
from .queue import QueueRows
from .s3 import BucketRows, S3KeyRows, UploadRows
from .samples import SampleRows
from .sessions import SessionRows
from .settings import SettingRows

# The tables a file must have to be taken for a registry (restore).
_REGISTRY_TABLES = {"files", "counters", "intents"}


class Tables:
    """The registry's tables over one connection: the writer's inside `transaction()`, or a
    reader's (whose writes fail: `PRAGMA query_only`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.files = FileRows(conn)
        self.intents = IntentRows(conn)
        self.queue = QueueRows(conn)
        self.jobs = JobRows(conn)
        self.cache = CacheRows(conn)
        self.pins = PinRows(conn)
        self.settings = SettingRows(conn)
        self.counters = CounterRows(conn)
        self.sessions = SessionRows(conn)
        self.grants = GrantRows(conn)
        self.accounts = AccountRows(conn)
        self.tokens = TokenRows(conn)
        self.account_storage = StorageRows(conn)
        self.s3_keys = S3KeyRows(conn)
        self.buckets = BucketRows(conn)
        self.uploads = UploadRows(conn)
        self.samples = SampleRows(conn)
        self.nodes = NodeRows(conn)
        self.stale = StaleRows(conn)

    @contextmanager
    def snapshot(self) -> Iterator[Tables]:
        """Several reads that see one state of the registry (a reader's read transaction)."""
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._conn.execute("COMMIT")

    def ping(self) -> None:
        """A round trip to the database (the readiness check)."""
        self._conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._conn.close()


# At most this much of the registry file is mapped: page cache the kernel can take back, but
# counted in RSS once touched, so bounded.
WRITER_MMAP_SIZE = 256 << 20


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write names its own BEGIN IMMEDIATE.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    if read_only:
        conn.execute("PRAGMA query_only = 1")
    else:
        # FULL: an acknowledged PUT survives a power cut, not only a killed process.
        conn.execute("PRAGMA synchronous = FULL")
        # Deleted and rewritten rows are zeroed in the pages a write touches anyway (no extra
        # I/O), so an old secret or a deleted path does not linger in the file.
        conn.execute("PRAGMA secure_delete = FAST")
        # The writer reads its pages through a map, not a pread(2) each: its reads are the
        # transactions' seeks (a GC draw, a commit's lookups), and mapped, a seek into a large
        # registry costs about what one into a small one does (bench/gc.py: an eviction at 1M
        # cache entries 1.43x the cost at 10k with pread, 1.2-1.3x mapped). Reads only: SQLite
        # still writes with write(2), so a full disk stays an error, never a SIGBUS. The
        # readers keep pread: their scans (start-up, listings) would put every page they pass
        # into the process's RSS, where the writer's seeks add some MiB (bench/backlog.py).
        conn.execute(f"PRAGMA mmap_size = {WRITER_MMAP_SIZE}")
    return conn


class SqliteRegistry:
    """The registry in `path`. `read_only`: no writer connection at all (commands that only
    look: they never migrate, recover or take a write lock)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._writer: Tables | None = None
        if not read_only:
            writer = _connect(path, read_only=False)
            sqlite_utils.Database(writer).enable_wal()
            self._writer = Tables(writer)
        elif not path.exists():
            raise ConfigError(f"no registry at {path}: start `filestore serve` once first")
        self._write_lock = threading.Lock()
        # Read-only, for the event loop's thread only (see the module docstring).
        self.read = self.open_reader()

    def open_reader(self) -> Tables:
        """Another read-only view, for a thread of its own (the caller closes it)."""
        return Tables(_connect(self.path, read_only=True))

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        return int(self.read._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`. Call only under the data directory's start lock."""
        writer = self._writable()._conn
        version = writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the registry has schema version {version}, newer than this filestore "
                f"({SCHEMA_VERSION}); upgrade filestore"
            )
        db = sqlite_utils.Database(writer)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[number - 1](db)
            writer.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self.read.close()
        if self._writer is not None:
            self._writer.close()

    # -- writes ---------------------------------------------------------------------------------

    def _writable(self) -> Tables:
        if self._writer is None:
            raise RuntimeError("the registry was opened read-only")
        return self._writer

    @contextmanager
    def transaction(self) -> Iterator[Tables]:
        """One write transaction: `BEGIN IMMEDIATE` takes SQLite's write lock up front."""
        tables = self._writable()
        conn = tables._conn
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield tables
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    raise InsufficientStorage("the data directory's disk is full") from None
                raise
            except BaseException:
                # Also after a failed COMMIT, which can leave the transaction (and SQLite's
                # write lock, which every process needs) open.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def single_write(self) -> AbstractContextManager[Tables]:
        return self.transaction()

    # -- copies ---------------------------------------------------------------------------------

    def backup(self, target: Path) -> None:
        """A consistent copy of the registry at `target`, safe while servers write to it, and
        private: mode 0600 (it holds the saved settings; their secrets are encrypted with the
        data directory's key file, which is never part of a backup). `VACUUM INTO` reads one
        snapshot (WAL readers never block the writers) and writes it rebuilt, so no bytes of
        deleted or rewritten rows (a secret an older filestore kept in plain text) come along,
        into a temp file that is fsynced and renamed into place."""
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        # Created private and empty: VACUUM INTO fills an empty file, and keeps its mode.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        source = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)
        try:
            source.execute("VACUUM INTO ?", (str(tmp),))
        finally:
            source.close()
        copy = sqlite3.connect(tmp)
        try:
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            copy.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)


def copy_backup(source: Path, tmp: Path) -> None:
    """Check that `source` is a sound registry of a schema this filestore knows and copy it to
    `tmp` (self-contained, fsynced) with SQLite's backup API, which also takes in a `-wal` file
    beside the source; a `ConfigError` says what is wrong with it otherwise."""
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"{source}: cannot open it ({exc})") from None
    try:
        try:
            version = src.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in src.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            check = src.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{source}: not a SQLite database ({exc})") from None
        if not tables >= _REGISTRY_TABLES or version < 1:
            raise ConfigError(f"{source}: not a filestore registry")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{source}: a registry of schema version {version}, newer than "
                              f"this filestore ({SCHEMA_VERSION}); upgrade filestore")
        if check != "ok":
            raise ConfigError(f"{source}: the database is damaged ({check})")
        copy = sqlite3.connect(tmp)
        try:
            src.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            # The PUTs in flight when the backup was taken belong to processes long gone:
            # recovery would record whatever lies at their paths now under their hashes.
            copy.execute("DELETE FROM intents")
            # Sessions signed out since the backup must not come back with it.
            if copy.execute("SELECT 1 FROM sqlite_master WHERE name = 'sessions'").fetchone():
                copy.execute("DELETE FROM sessions")
            copy.commit()
        finally:
            copy.close()
    finally:
        src.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
