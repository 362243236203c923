"""What the PostgreSQL migrations share: the column type of text, and PL/pgSQL trigger builders
mirroring SQLite's `CREATE TRIGGER ... BEGIN ... END`.

Text compares byte by byte (`COLLATE "C"`), as SQLite's BINARY collation does, so orderings and
the prefix ranges (`path >= P AND path < P || MAX_CHAR`) mean the same in both backends whatever
collation the database was created with. A SQLite trigger is here a trigger function (its body)
and a `CREATE TRIGGER` naming it, with the same name, event, columns and `WHEN` condition. Row
triggers fire after the statement in PostgreSQL (during it in SQLite): the counters and slots
they keep come out the same (`tests/test_registry_contract.py` recounts them).
"""

from __future__ import annotations

from collections.abc import Callable

TEXT = 'text COLLATE "C"'
REAL = "double precision"


def function(name: str, body: str) -> str:
    """A trigger function running `body` (PL/pgSQL statements) for each row."""
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND\n$fn$")


def trigger(name: str, event: str, table: str, func: str, when: str = "") -> str:
    """`CREATE TRIGGER name AFTER event ON table`, for each row (`when`: its condition, which
    PostgreSQL allows no subquery in)."""
    condition = f" WHEN ({when})" if when else ""
    return (f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{condition} "
            f"EXECUTE FUNCTION {func}()")


def on(name: str, event: str, table: str, body: str, when: str = "") -> list[str]:
    """A trigger with a function of its own name."""
    return [function(name, body), trigger(name, event, table, name, when)]


def counting_triggers(table: str, columns: str, bump: Callable[[str, str], str]) -> list[str]:
    """SQLite's `counting_triggers`: `bump(sign, row)` adds ("+") or removes ("-") the row `row`
    ("NEW" or "OLD") from the counters, on every insert and delete and on updates of
    `columns` (the old row out, the new one in)."""
    func = f"{table}_count"
    body = (f"IF TG_OP <> 'INSERT' THEN\n{bump('-', 'OLD')}\nEND IF;\n"
            f"IF TG_OP <> 'DELETE' THEN\n{bump('+', 'NEW')}\nEND IF;")
    return [function(func, body),
            trigger(f"{table}_count_insert", "INSERT", table, func),
            trigger(f"{table}_count_delete", "DELETE", table, func),
            trigger(f"{table}_count_update", f"UPDATE OF {columns}", table, func)]


def add_counters(*names: str) -> str:
    """Counters that start at 0 (kept if they exist)."""
    values = ", ".join(f"('{name}', 0)" for name in names)
    return f"INSERT INTO counters (name, value) VALUES {values} ON CONFLICT (name) DO NOTHING"
