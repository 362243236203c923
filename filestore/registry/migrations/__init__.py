"""The registry's schema: numbered migrations, run in order at open (`PRAGMA user_version`).

Each migration creates what a capability added, so later ones never touch existing data. They run
under the data directory's start-up lock (see `datadir.py`). SQLite-only: counters are kept by
triggers in the same transaction as the change they count (a PostgreSQL backend needs the same
triggers in PL/pgSQL, numbered alike).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from .account_storage import migration_9
from .accounts import migration_6, migration_7
from .at_risk import migration_8
from .cache_pins import migration_10
from .cluster import migration_13
from .s3 import migration_12
from .samples import migration_11
from .single_node import migration_1, migration_2, migration_3, migration_4, migration_5
from .static_etags import migration_14, migration_15

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    migration_1, migration_2, migration_3, migration_4, migration_5, migration_6,
    migration_7, migration_8, migration_9, migration_10, migration_11, migration_12,
    migration_13, migration_14, migration_15,
]
SCHEMA_VERSION = len(MIGRATIONS)
SETTINGS_SCHEMA = 4  # the version that added saved settings (and move jobs)
