"""The registry: the one owner of SQL. It knows every file, where it is, the remote work queued
for it, the move jobs, the cache index, the saved settings, the counters, the admin sessions
and the spent single-use signed URLs.

`interface.py` writes down what the rest of filestore uses (`Registry`, `Tables` and one
protocol per table group); `opening.py` opens the configured backend: `sqlite.py` (SQLite in the
data directory, the default) or `postgres/` (a PostgreSQL database several processes or nodes
share, its own module per table group and the same numbered migrations). SQLite has one
module per table group (`files.py`, `queue.py`, `jobs.py`, `cache.py`, `settings.py`,
`counters.py`, `sessions.py` the admin sessions, `grants.py` the single-use signed URLs,
`accounts.py`, `account_storage.py`, `nodes.py` the nodes and their stale bytes) and the
schema's numbered migrations (`migrations/`).
Nothing outside this package writes SQL or imports `sqlite3` or `psycopg`.

Use: `registry.read.files.get(path)` reads (event loop's thread); `with registry.transaction()
as tx: tx.files.upsert(...); tx.queue.schedule(...)` writes, all or nothing.
"""

from .accounts import Account, AccountToken, usage_counter
from .cache import CacheEntry
from .counters import CACHE_EVENTS, LOCATIONS, RemoteCounters, remote_counter_names
from .files import FileRecord, Intent
from .interface import Registry, Tables
from .jobs import KINDS as JOB_KINDS
from .jobs import LEASE_SECONDS as JOB_LEASE_SECONDS
from .jobs import Job
from .migrations import SCHEMA_VERSION, SETTINGS_SCHEMA
from .nodes import Node, NodeFigures
from .opening import is_postgres, open_registry, registry_exists, require_sqlite
from .queue import Entry, in_flight
from .s3 import Part, Upload
from .sqlite import SqliteRegistry, copy_backup

__all__ = [
    "CACHE_EVENTS", "JOB_KINDS", "JOB_LEASE_SECONDS", "LOCATIONS", "SCHEMA_VERSION",
    "SETTINGS_SCHEMA", "Account", "AccountToken", "CacheEntry", "Entry", "FileRecord", "Intent",
    "Job", "Node", "NodeFigures", "Part", "Registry", "RemoteCounters", "SqliteRegistry",
    "Tables", "Upload",
    "copy_backup", "in_flight", "is_postgres", "open_registry", "registry_exists",
    "remote_counter_names", "require_sqlite", "usage_counter",
]
