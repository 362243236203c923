"""The PostgreSQL registry's schema: the same numbered migrations as SQLite's (1..15, one to one,
each creating what the same capability added), run in order by `PostgresRegistry.migrate`, each
in one transaction with the `schema_version` row it moves (PostgreSQL's DDL is transactional:
a migration that fails leaves nothing behind).

Each is a list of statements: tables, indexes, and the PL/pgSQL triggers that mirror SQLite's,
trigger for trigger and counter name for counter name, so the counters move in the same
transaction as the change they count and statistics stay one row read each.
"""

from __future__ import annotations

from collections.abc import Callable

from ...migrations import SCHEMA_VERSION
from .accounts import migration_6, migration_7, migration_9
from .at_risk import migration_8
from .cache_pins import migration_10
from .cluster import claim, migration_13
from .s3 import migration_11, migration_12
from .single_node import migration_1, migration_2, migration_3, migration_4, migration_5
from .static_etags import migration_14, migration_15

MIGRATIONS: list[Callable[[], list[str]]] = [
    migration_1, migration_2, migration_3, migration_4, migration_5, migration_6,
    migration_7, migration_8, migration_9, migration_10, migration_11, migration_12,
    migration_13, migration_14, migration_15,
]
assert len(MIGRATIONS) == SCHEMA_VERSION, "a migration has no PostgreSQL twin"
# Run after a migration by the node that ran it, with its name: what the registry held until
# then becomes that node's (13: the first with several nodes).
CLAIMS: dict[int, Callable[[str], list[tuple[str, tuple[str, ...]]]]] = {13: claim}

# The one-row table that numbers the schema (SQLite: `PRAGMA user_version`).
SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (one boolean PRIMARY KEY DEFAULT true "
                "CHECK (one), version integer NOT NULL)")
