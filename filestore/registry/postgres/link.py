"""One connection as the row classes use it: run a statement, get its rows, its first row, its
first value or how many rows it changed, all fetched at once (no cursor outlives a call).

A transaction's link wraps the pooled connection the transaction holds. A reader's link wraps a
dedicated autocommit connection and, when PostgreSQL dropped it (a restart, a network cut), opens
a new one at its next statement, so the event loop's lookups resume by themselves; the statement
that found it dropped fails (`psycopg.OperationalError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

Params = Sequence[Any]
Connection = psycopg.Connection[tuple[Any, ...]]


class Link:
    def __init__(self, conn: Connection, reconnect: Callable[[], Connection] | None = None) -> None:
        self._conn = conn
        self._reconnect = reconnect

    @property
    def conn(self) -> Connection:
        if self._reconnect is not None and self._conn.closed:
            self._conn = self._reconnect()
        return self._conn

    def execute(self, sql: str, params: Params = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        return self.conn.execute(sql, params)

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
        if batch:
            with self.conn.cursor() as cursor:
                cursor.executemany(sql, batch)

    def close(self) -> None:
        self._conn.close()
