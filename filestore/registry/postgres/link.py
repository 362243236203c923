"""One connection as the row classes use it: run a statement, get its rows, its first row, its
first value or how many rows it changed, all fetched at once (no cursor outlives a call).

A transaction's link wraps the pooled connection the transaction holds. A reader's link wraps a
dedicated autocommit connection and, when PostgreSQL dropped it (a restart, a network cut), opens
a new one at its next statement, so the event loop's lookups resume by themselves.

A lost connection is `RegistryUnavailable` (a 503 with Retry-After at the edges), translated
here for every statement of every row class: the statement that found the connection dropped, a
reconnect the server refuses (tried again at most once per `RECONNECT_EVERY`: a server that is
away is not asked at every lookup of the event loop). A statement's own error (bad SQL, a
constraint, a deadlock, a full disk) surfaces as psycopg raised it (`connection_lost`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg

from ...errors import RegistryUnavailable

Params = Sequence[Any] | Mapping[str, Any]
Connection = psycopg.Connection[tuple[Any, ...]]

# What the server says when it is going away or takes no connection now, beside class 08
# (connection exception): shutting down (fast or immediate), crashed and restarting, starting up
# or in recovery, the session timed out, every connection slot taken.
_SERVER_AWAY = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})
RECONNECT_EVERY = 1.0  # seconds between a reader's attempts while the server refuses them


def connection_lost(exc: BaseException, conn: Connection | None = None) -> bool:
    """Whether `exc` says the server cannot be talked to now, not that the statement is wrong:
    libpq's own errors (no SQLSTATE: refused, timed out, cut off, closed; the pool's timeout
    too), class 08 and `_SERVER_AWAY`; an `InterfaceError` only on a closed connection."""
    if isinstance(exc, psycopg.errors.PipelineAborted):
        return False  # no SQLSTATE, but it stands for the failed statement before it
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _SERVER_AWAY
    if isinstance(exc, psycopg.InterfaceError):
        return conn is not None and conn.closed
    return False


def unavailable(where: str, exc: BaseException) -> RegistryUnavailable:
    """The domain error for a lost connection. libpq's first line says why (refused, timed
    out, terminated); it never holds the password, and `where` is the redacted URL."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return RegistryUnavailable(f"the registry's PostgreSQL server ({where}) cannot be reached: "
                               f"{reason}")


class Link:
    """`where`: the server as messages name it (the redacted URL)."""

    def __init__(self, conn: Connection, reconnect: Callable[[], Connection] | None = None,
                 where: str = "") -> None:
        self._conn = conn
        self._reconnect = reconnect
        self.where = where
        self._retry_at = 0.0  # monotonic: no reconnect before it (a failed one sets it)
        self._refused = ""  # why the last reconnect failed, said again until the next one

    @property
    def conn(self) -> Connection:
        if self._reconnect is not None and self._conn.closed:
            if time.monotonic() < self._retry_at:
                raise RegistryUnavailable(self._refused)
            try:
                self._conn = self._reconnect()  # raises RegistryUnavailable when refused
            except RegistryUnavailable as exc:
                self._retry_at, self._refused = time.monotonic() + RECONNECT_EVERY, exc.detail
                raise
        return self._conn

    def execute(self, sql: str, params: Params = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        conn = self.conn
        try:
            return conn.execute(sql, params)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not connection_lost(exc, conn):
                raise
            raise unavailable(self.where, exc) from exc

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.execute(sql, params).fetchall()

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        return self.execute(sql, params).fetchone()

    def value(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row (None: no row)."""
        row = self.one(sql, params)
        return None if row is None else row[0]

    def count(self, sql: str, params: Params = ()) -> int:
        """How many rows the statement changed."""
        return self.execute(sql, params).rowcount

    def many(self, sql: str, params: Iterable[Params]) -> None:
        """One statement for each parameter set (pipelined: one round trip for all of them)."""
        batch = list(params)
        if not batch:
            return
        conn = self.conn
        try:
            with conn.cursor() as cursor:
                cursor.executemany(sql, batch)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not connection_lost(exc, conn):
                raise
            raise unavailable(self.where, exc) from exc

    def close(self) -> None:
        self._conn.close()
