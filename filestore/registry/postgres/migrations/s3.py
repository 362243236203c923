"""Migrations 11 and 12 in PostgreSQL: the charts' samples, and the S3 endpoint's keys, buckets
and multipart uploads (see `registry/migrations/samples.py` and `s3.py`)."""

from __future__ import annotations

from .triggers import REAL, TEXT


def migration_11() -> list[str]:
    return [
        f"""CREATE TABLE samples (
          slot bigint PRIMARY KEY,
          time {REAL} NOT NULL,
          uploads bigint NOT NULL,
          uploaded_bytes bigint NOT NULL,
          sent_bytes bigint,
          cache_bytes bigint NOT NULL,
          cloud_bytes bigint NOT NULL,
          hits bigint NOT NULL,
          misses bigint NOT NULL,
          backlog bigint NOT NULL,
          failed bigint NOT NULL,
          at_risk_bytes bigint NOT NULL,
          oldest_age {REAL}
        )""",
    ]


def migration_12() -> list[str]:
    return [
        f"""CREATE TABLE s3_keys (
          access_key_id {TEXT} PRIMARY KEY, account {TEXT} NOT NULL, secret {TEXT} NOT NULL,
          created {REAL} NOT NULL
        )""",
        "CREATE INDEX s3_keys_account ON s3_keys (account)",
        f"""CREATE TABLE s3_buckets (
          owner {TEXT} NOT NULL, name {TEXT} NOT NULL, created {REAL} NOT NULL,
          PRIMARY KEY (owner, name)
        )""",
        f"""CREATE TABLE s3_uploads (
          upload_id {TEXT} PRIMARY KEY, owner {TEXT} NOT NULL, bucket {TEXT} NOT NULL,
          key {TEXT} NOT NULL, path {TEXT} NOT NULL, content_type {TEXT}, meta {TEXT},
          created {REAL} NOT NULL
        )""",
        "CREATE INDEX s3_uploads_bucket ON s3_uploads (owner, bucket, key)",
        "CREATE INDEX s3_uploads_created ON s3_uploads (created)",
        f"""CREATE TABLE s3_parts (
          upload_id {TEXT} NOT NULL, number integer NOT NULL, size bigint NOT NULL,
          md5 {TEXT} NOT NULL, file {TEXT} NOT NULL, created {REAL} NOT NULL,
          PRIMARY KEY (upload_id, number)
        )""",
        f"""CREATE TABLE s3_objects (
          path {TEXT} PRIMARY KEY, sha256 {TEXT} NOT NULL, etag {TEXT}, meta {TEXT}
        )""",
    ]
