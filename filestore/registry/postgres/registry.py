"""The PostgreSQL registry: one database that several filestore processes (and, with the cluster
work of #16, several nodes) share. Chosen by `[registry] url = "postgresql://..."`.

Connections. Write transactions take a connection from a pool (psycopg-pool, `registry.pool_size`
per process); one whose socket has something to say is checked before use (`_check_if_spoken`),
so a connection PostgreSQL dropped is replaced, not handed out, and a sound one costs no round
trip. `read` is one dedicated autocommit connection, read-only (`default_transaction_read_only`,
SQLite's `PRAGMA query_only`), for the event loop's cheap lookups, reconnected at the next
statement when PostgreSQL dropped it; so is a node's heartbeat connection (`open_heartbeats`),
writable. What that costs: in SQLite a primary-key lookup is a few microseconds in the process;
here every statement is a round trip to the server (some 50-100 us on the same host, a network
RTT across machines), and it blocks the event loop's thread for that long. A view that reads
several rows pays one round trip per statement.

What SQLite's `BEGIN IMMEDIATE` gave, and what stands in for it here, table group by table group:

- Every write transaction: SQLite's one writer means a read inside a transaction sees the
  state its writes land on. Here `pg_advisory_xact_lock(REGISTRY_LOCK)` comes first (the
  registry lock): one write transaction at a time across every process sharing the database.
  Reads never wait for it (MVCC), and it goes with the commit or the rollback.
- files: `upsert` reads the row and `seq.version`, then writes. The same, under the registry
  lock; the row is read `FOR UPDATE` and `seq.version` moved by `UPDATE ... RETURNING`, the row
  locks it would need without it.
- counters: hot rows, moved by triggers in whatever order a transaction touches them. Row locks
  alone could deadlock two transactions moving the same counters in opposite orders; the
  registry lock never lets them meet.
- queue: a lease goes to one worker. `SELECT ... FOR UPDATE SKIP LOCKED`, correct without the
  registry lock and never waiting for another leaser. `finish`, `fail`, `upload_now` and
  `release_job` read the row, then rewrite it: the registry lock.
- jobs: at most one active job (`create` checks, then inserts): the registry lock. The lease is
  also `FOR UPDATE SKIP LOCKED`.
- cache: dense slots (a new entry takes `max(slot) + 1`; a trigger fills a freed slot from the
  top) and the pinned bytes checked against `cache.pin_limit`: the registry lock; the unique
  index on `slot` would refuse a breach rather than let two entries share a slot.
- accounts, tokens, S3 keys, buckets: a name checked free, then inserted: the registry lock;
  the primary keys refuse a duplicate anyway.
- settings, account storage, sessions: a save moves the generations every process watches
  (counters): the registry lock.
- grants, samples: one winner per nonce or interval, decided by `INSERT ... ON CONFLICT DO
  NOTHING` on the primary key, as in SQLite.
- schema: SQLite migrates under the data directory's start lock; here each migration runs under
  `pg_advisory_xact_lock(MIGRATE_LOCK)`, so nodes starting at once migrate once.

The registry lock serializes writers as SQLite does within one data directory, now across every
process sharing the database; reads run beside it. Narrowing it (row locks per group, the lease
paths first) is the cluster's work, and this list says what each group would need.

SQLite-only: `backup` (`VACUUM INTO`) is refused here in one line naming `pg_dump`;
`copy_backup` and `filestore restore` work on SQLite files (PostgreSQL's is `pg_restore`).
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from ...errors import ConfigError, InsufficientStorage
from ..migrations import SCHEMA_VERSION
from .accounts import AccountRows, TokenRows
from .cache import CacheRows, PinRows
from .files import FileRows, IntentRows
from .jobs import JobRows
from .link import Connection, Link, connection_lost, unavailable
from .migrations import CLAIMS, MIGRATIONS, SCHEMA_TABLE
from .nodes import Heartbeats, NodeRows, StaleRows
from .queue import QueueRows
from .s3 import BucketRows, S3KeyRows, UploadRows
from .sessions import GrantRows, SampleRows, SessionRows
from .settings import CounterRows, SettingRows, StorageRows

# Advisory lock keys (64-bit, chosen once): the registry's writers, and its migrations.
REGISTRY_LOCK = 0x66_73_72_65_67_00_00_01  # "fsreg" 1
MIGRATE_LOCK = 0x66_73_72_65_67_00_00_02
_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
# A statement sent to a server cut off without a word (a network black hole: no reset, no
# reply) fails after this long unacknowledged (ms, TCP_USER_TIMEOUT), as a stopped server's
# does at once; not after Linux's 15 minutes of retransmits. The event loop's lookups and the
# heartbeats wait that long at most. An alive server acknowledges a statement at once,
# however long it runs.
_TCP_USER_TIMEOUT_MS = 10_000
_POOL_TIMEOUT = 30.0  # seconds a transaction waits for a free pooled connection
# After this long without one, the reader asks whether the server is there at all.
_FIRST_WAIT = 1.0
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({REGISTRY_LOCK})"
_READER = "SET default_transaction_read_only = on"
# A beat a crash of the server loses costs nothing (the next one comes within seconds): its
# commit need not wait for the WAL's flush, behind the writers' flushes.
_HEARTBEAT = "SET synchronous_commit = off"
_IDLE = psycopg.pq.TransactionStatus.IDLE


def _check_if_spoken(conn: Connection) -> None:
    """psycopg-pool's check of a connection it hands out, without a round trip for a sound
    one: an idle connection's server speaks only to end it (a restart, a terminated backend,
    an idle timeout: its FATAL message or the socket's end make the socket readable), so a
    readable socket, or a closed connection, gets the real check (an empty query), which
    raises and makes the pool replace it. A server cut off without a word (a network black
    hole) is met by the statement itself, as by the real check."""
    if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
        psycopg_pool.ConnectionPool.check_connection(conn)


def redacted(url: str) -> str:
    """The URL without its password (in the user part or a `password=` parameter), for
    messages and logs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # unparsable: say nothing of it
        return "postgresql://***"
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if port is not None:
            netloc += f":{port}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class Tables:
    """The registry's tables over one link: a transaction's pooled connection, or a reader's
    (whose writes fail: `default_transaction_read_only`)."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        # What stays per node though the registry is shared (migration 13) is this node's:
        # its view of a file's inode, its intents, its cache index and counters, its leases.
        self.files = FileRows(link, node)
        self.intents = IntentRows(link, node)
        self.queue = QueueRows(link, node)
        self.jobs = JobRows(link)
        self.cache = CacheRows(link, node)
        self.pins = PinRows(link, node)
        self.settings = SettingRows(link)
        self.counters = CounterRows(link, node)
        self.nodes = NodeRows(link)
        self.stale = StaleRows(link, node)
        self.sessions = SessionRows(link)
        self.grants = GrantRows(link)
        self.accounts = AccountRows(link)
        self.tokens = TokenRows(link)
        self.account_storage = StorageRows(link)
        self.s3_keys = S3KeyRows(link)
        self.buckets = BucketRows(link)
        self.uploads = UploadRows(link)
        self.samples = SampleRows(link)

    @contextmanager
    def snapshot(self) -> Iterator[Tables]:
        """Several reads that see one state: a `REPEATABLE READ` read transaction on a reader;
        inside a write transaction, that transaction already is one."""
        conn = self._link.conn
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            yield self
            return
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield self

    def ping(self) -> None:
        self._link.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._link.close()


class PostgresRegistry:
    """The registry in the PostgreSQL database at `url`. `read_only`: no pool at all (commands
    that only look never migrate, recover or write)."""

    def __init__(self, url: str, *, node: str = "", pool_size: int = 4,
                 read_only: bool = False) -> None:
        self._url = url  # holds the password: never shown (see `where`)
        self.node = node  # whose per-node rows its tables read and write
        self.where = redacted(url)
        self.read_only = read_only
        self._pool: psycopg_pool.ConnectionPool[Connection] | None = None
        # Opened first: an unreachable server or a refused login fails here, in one line.
        self.read = self.open_reader()
        if not read_only:
            self._pool = psycopg_pool.ConnectionPool(
                url, min_size=1, max_size=pool_size, open=True, timeout=_POOL_TIMEOUT,
                kwargs={"autocommit": True, **self._connect_options()},
                check=_check_if_spoken,
                # After an outage of this long the pool stops trying to reconnect, and starts
                # again at the next transaction (its 300 s default backs off to minutes).
                reconnect_timeout=30,
                name="filestore-registry")
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresRegistry({self.where!r}, read_only={self.read_only})"

    def _connect_options(self) -> dict[str, Any]:
        """libpq's timeouts, each unless the URL sets its own (an unparsable URL raises
        psycopg's ProgrammingError, as a connection to it would)."""
        given = conninfo_to_dict(self._url)
        options = {"connect_timeout": _CONNECT_TIMEOUT, "tcp_user_timeout": _TCP_USER_TIMEOUT_MS}
        return {name: value for name, value in options.items() if name not in given}

    def _connect(self, session: str, *, first: bool = False) -> Connection:
        """A connection of its own, `session` (SET statements) run on it. A server it cannot
        reach is a `ConfigError` when `first` (the registry opening: a wrong URL is as likely as
        a stopped server, and the command ends in one line), later `RegistryUnavailable` (it
        went away: try again soon)."""
        try:
            conn = psycopg.connect(self._url, autocommit=True, **self._connect_options())
            conn.execute(session)
        except psycopg.OperationalError as exc:
            if not first:
                raise unavailable(self.where, exc) from None
            # libpq's first line says why (refused, unknown host, failed login); it never
            # holds the password.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"cannot reach the PostgreSQL registry at {self.where}: "
                              f"{reason}") from None
        except psycopg.ProgrammingError:
            # An unparsable URL: libpq's message may quote it, password and all.
            raise ConfigError(f"registry.url is no PostgreSQL URL libpq can read "
                              f"({self.where})") from None
        return conn

    def open_reader(self) -> Tables:
        """Another read-only view on a connection of its own (the caller closes it). The first
        is the registry's `read`, opened with it (see `_connect`)."""
        first = getattr(self, "read", None) is None
        return Tables(Link(self._connect(_READER, first=first),
                           reconnect=lambda: self._connect(_READER), where=self.where),
                      self.node)

    def open_heartbeats(self) -> Heartbeats:
        """The node's heartbeats on a connection of their own (the caller closes it), each beat
        one autocommitted statement without the registry lock: a beat never waits for a pooled
        connection nor behind the writers queued on the lock (a node whose beats queued there
        would look dead to the others). Reconnected at the next beat when PostgreSQL dropped
        it; `RegistryUnavailable` while the server cannot be reached."""
        return Heartbeats(Link(self._connect(_HEARTBEAT),
                               reconnect=lambda: self._connect(_HEARTBEAT), where=self.where))

    # -- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """0 for a database no filestore migrated yet."""
        if self.read._link.value("SELECT to_regclass('schema_version')") is None:
            return 0
        version = self.read._link.value("SELECT version FROM schema_version")
        return int(version or 0)

    def migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, one transaction per migration, each under the
        migrations' advisory lock and re-reading the version (another node may have run it)."""
        with self._writable().connection() as conn:
            for number in range(1, SCHEMA_VERSION + 1):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                    conn.execute(SCHEMA_TABLE)
                    conn.execute("INSERT INTO schema_version (version) VALUES (0) "
                                 "ON CONFLICT DO NOTHING")
                    row = conn.execute("SELECT version FROM schema_version").fetchone()
                    version = int(row[0]) if row else 0
                    if version > SCHEMA_VERSION:
                        raise RuntimeError(
                            f"the registry has schema version {version}, newer than this "
                            f"filestore ({SCHEMA_VERSION}); upgrade filestore")
                    if version >= number:
                        continue
                    for statement in MIGRATIONS[number - 1]():
                        conn.execute(statement)
                    if self.node and number in CLAIMS:
                        for statement, params in CLAIMS[number](self.node):
                            conn.execute(statement, params)
                    conn.execute("UPDATE schema_version SET version = %s", (number,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.read.close()
        if self._pool is not None:
            self._pool.close()

    # -- writes ---------------------------------------------------------------------------------

    def _writable(self) -> psycopg_pool.ConnectionPool[Connection]:
        if self._pool is None:
            raise RuntimeError("the registry was opened read-only")
        return self._pool

    @contextmanager
    def transaction(self) -> Iterator[Tables]:
        """One write transaction, all or nothing, under the registry lock (see the module
        docstring): PostgreSQL's `BEGIN IMMEDIATE`. `BEGIN` and the lock go as one simple
        query (one round trip). A server that cannot be talked to (gone before, during or at
        the COMMIT) is `RegistryUnavailable`, within about `_FIRST_WAIT` when it is away
        before the transaction begins."""
        with self._pooled() as conn:
            conn.execute(_BEGIN_LOCKED)
            try:
                yield Tables(Link(conn, where=self.where), self.node)
            except BaseException:
                if not conn.closed and conn.info.transaction_status != _IDLE:
                    with suppress(psycopg.Error):  # a broken connection: the pool drops it
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def single_write(self) -> Iterator[Tables]:
        """Tables whose every statement commits on its own, without the registry lock: for a
        write of one statement that no read decides (a PUT's intent). One round trip where a
        transaction takes three."""
        with self._pooled() as conn:
            yield Tables(Link(conn, where=self.where), self.node)

    @contextmanager
    def _pooled(self) -> Iterator[Connection]:
        """A pooled connection (autocommit), its errors translated: a lost server is
        `RegistryUnavailable`, a full disk `InsufficientStorage`."""
        pool = self._writable()
        conn: Connection | None = None
        try:
            with ExitStack() as held:
                try:
                    conn = held.enter_context(pool.connection(timeout=_FIRST_WAIT))
                except psycopg_pool.PoolTimeout:
                    # Every connection busy (a burst of writers), or the server away (the pool
                    # cannot replace the connections it lost)? The reader asks the server:
                    # away raises now rather than after the pool's timeout; busy waits on.
                    self.read.ping()
                    conn = held.enter_context(
                        pool.connection(timeout=_POOL_TIMEOUT - _FIRST_WAIT))
                yield conn
        except psycopg.errors.DiskFull:
            raise InsufficientStorage("the PostgreSQL registry's disk is full") from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not connection_lost(exc, conn):
                raise
            raise unavailable(self.where, exc) from exc

    # -- copies ---------------------------------------------------------------------------------

    def backup(self, target: Path) -> None:
        raise ConfigError(f"the registry is in PostgreSQL ({self.where}): back it up with "
                          "pg_dump, not filestore backup")


if TYPE_CHECKING:  # mypy checks here that this backend meets the protocols, as sqlite.py's does
    from ..interface import Registry

    def _postgres_conforms(registry: PostgresRegistry) -> Registry:
        return registry
