"""Migration 12: the S3 endpoint's access keys and buckets (`s3api/`)."""

from __future__ import annotations

import sqlite_utils


def migration_12(db: sqlite_utils.Database) -> None:
    """Access key pairs (the administrator's, `account` ''; an account's, its id), the secret
    encrypted (`secrets.py`: a SigV4 check needs the secret itself, not a hash), and buckets,
    each a top-level namespace of its owner's: the administrator's bucket `x` is the path
    prefix `x/`, an account's bucket `x` is `ACCOUNT/x/`."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS s3_keys (
          access_key_id TEXT PRIMARY KEY,
          account TEXT NOT NULL,          -- '' : the administrator's
          secret TEXT NOT NULL,           -- enc:v1:... (never in clear)
          created REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS s3_keys_account ON s3_keys (account);
        CREATE TABLE IF NOT EXISTS s3_buckets (
          owner TEXT NOT NULL,            -- '' : the administrator's; else an account id
          name TEXT NOT NULL,
          created REAL NOT NULL,
          PRIMARY KEY (owner, name)
        ) WITHOUT ROWID;
        """
    )
