"""A helper the migrations share: triggers that keep counters in step with a table."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


def counting_triggers(db: sqlite_utils.Database, table: str, columns: str,
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
