"""Which registry a process opens: `[registry] url` empty is SQLite in the data directory (the
embedded default), `postgresql://...` the PostgreSQL database several processes or nodes share.

The PostgreSQL backend (and psycopg with it) is imported only when one is configured.
"""

from __future__ import annotations

from ..config import Settings
from ..datadir import DataDir
from ..errors import ConfigError
from .interface import Registry
from .sqlite import SqliteRegistry

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(settings: Settings) -> bool:
    return bool(settings.registry.url)


def open_registry(settings: Settings, *, read_only: bool = False) -> Registry:
    """The configured registry (not migrated: the caller migrates, under the data directory's
    start-up lock). `read_only`: no writer at all; a SQLite registry must exist already."""
    url = settings.registry.url
    if not url:
        return SqliteRegistry(DataDir(settings.data_dir).registry_path, read_only=read_only)
    if not url.startswith(_SCHEMES):
        raise ConfigError("registry.url: a postgresql://user:password@host:port/database URL, "
                          "or empty for SQLite in the data directory")
    from .postgres import PostgresRegistry

    return PostgresRegistry(url, node=settings.node, pool_size=settings.registry.pool_size,
                            read_only=read_only)


def registry_exists(settings: Settings) -> bool:
    """Whether there may be a registry to open without creating one: a SQLite file in the data
    directory, or a PostgreSQL database (whose schema version then tells)."""
    return is_postgres(settings) or DataDir(settings.data_dir).registry_path.exists()


def where(settings: Settings) -> str:
    """Where the registry is, for messages: its file, or the database's URL without password."""
    if not is_postgres(settings):
        return str(DataDir(settings.data_dir).registry_path)
    from .postgres import redacted

    return redacted(settings.registry.url)


def require_sqlite(settings: Settings, what: str, instead: str) -> None:
    """Refuse a SQLite-only command (`what`) on a PostgreSQL registry, in one line naming the
    PostgreSQL tool to use (`instead`)."""
    if is_postgres(settings):
        raise ConfigError(f"{what} works on a SQLite registry; this one is in PostgreSQL "
                          f"({where(settings)}): use {instead}")
