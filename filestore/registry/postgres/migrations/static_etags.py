"""Migrations 14 and 15 in PostgreSQL: `files.plain_etag` and `etag_floors` (see
`registry/migrations/static_etags.py`; nginx's static hits run on a single node, so a shared
registry never gives a plain ETag, but the schema stays one to one)."""

from __future__ import annotations

from .triggers import TEXT


def migration_14() -> list[str]:
    return [
        f"CREATE TABLE etag_floors (path {TEXT} PRIMARY KEY, second bigint NOT NULL)",
        "ALTER TABLE files ADD COLUMN plain_etag boolean NOT NULL DEFAULT false",
    ]


def migration_15() -> list[str]:
    return ["CREATE INDEX etag_floors_second ON etag_floors (second)"]
