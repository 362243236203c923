"""Migrations 14 and 15: ETags nginx can give (`server.static_hits`, static.py)."""

from __future__ import annotations

import sqlite_utils


def migration_14(db: sqlite_utils.Database) -> None:
    """`files.plain_etag`: this version's ETag is nginx's own for a static file,
    `"<hex mtime>-<hex size>"` (its mtime the version's Last-Modified), so that nginx can
    answer its hits from `static/` with the very ETag filestore gives; 0: the SHA-256 one.
    `etag_floors` keeps, per path and across DELETEs, the last second a plain ETag was given
    for: a version gets one only for a later second, so no two versions of a path ever share
    one (a re-PUT of the same size within the second gets the SHA-256 ETag instead).
    Idempotent: a crash before `user_version` moves only runs it again."""
    db.execute("CREATE TABLE IF NOT EXISTS etag_floors (path TEXT PRIMARY KEY, "
               "second INTEGER NOT NULL) WITHOUT ROWID")
    if "plain_etag" not in db.table("files").columns_dict:
        db.execute("ALTER TABLE files ADD COLUMN plain_etag INTEGER NOT NULL DEFAULT 0")


def migration_15(db: sqlite_utils.Database) -> None:
    """`etag_floors` by second, so that each claim drops the floors too old to matter
    (`FileRows.claim_plain_etag`): the table holds the last day's claims, not one row per
    path ever PUT. Idempotent."""
    db.execute("CREATE INDEX IF NOT EXISTS etag_floors_second ON etag_floors (second)")
