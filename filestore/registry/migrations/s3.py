"""Migration 12: the S3 endpoint's access keys, buckets and multipart uploads (`s3api/`)."""

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
        -- Multipart uploads in progress: each part a file in data_dir/s3-uploads/ID/.
        CREATE TABLE IF NOT EXISTS s3_uploads (
          upload_id TEXT PRIMARY KEY,
          owner TEXT NOT NULL,
          bucket TEXT NOT NULL,
          key TEXT NOT NULL,
          path TEXT NOT NULL,             -- the file it becomes
          content_type TEXT,
          meta TEXT,                      -- its x-amz-meta-* headers, as JSON
          created REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS s3_uploads_bucket ON s3_uploads (owner, bucket, key);
        CREATE INDEX IF NOT EXISTS s3_uploads_created ON s3_uploads (created);
        CREATE TABLE IF NOT EXISTS s3_parts (
          upload_id TEXT NOT NULL,
          number INTEGER NOT NULL,
          size INTEGER NOT NULL,
          md5 TEXT NOT NULL,
          file TEXT NOT NULL,             -- its name in the upload's directory
          created REAL NOT NULL,
          PRIMARY KEY (upload_id, number)
        ) WITHOUT ROWID;
        -- What S3 keeps of an object beyond the file: the ETag of one assembled from parts
        -- ("MD5-of-part-MD5s-N") and its x-amz-meta-* headers (JSON), while the file still
        -- has the bytes they came with (its SHA-256).
        CREATE TABLE IF NOT EXISTS s3_objects (
          path TEXT PRIMARY KEY,
          sha256 TEXT NOT NULL,
          etag TEXT,
          meta TEXT
        ) WITHOUT ROWID;
        """
    )
