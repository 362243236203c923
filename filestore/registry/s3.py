"""The S3 endpoint's tables: access keys (their secrets as stored: encrypted) and buckets."""

from __future__ import annotations

import sqlite3


class S3KeyRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, access_key_id: str) -> tuple[str, str, float] | None:
        """(account, sealed secret, created) of a key ("" account: the administrator's)."""
        row = self._conn.execute("SELECT account, secret, created FROM s3_keys "
                                 "WHERE access_key_id = ?", (access_key_id,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def listing(self, account: str) -> list[tuple[str, float]]:
        """(access key id, created) of the owner's keys, oldest first."""
        rows = self._conn.execute("SELECT access_key_id, created FROM s3_keys WHERE account = ? "
                                  "ORDER BY created, access_key_id", (account,)).fetchall()
        return [(key, created) for key, created in rows]

    def add(self, access_key_id: str, account: str, sealed: str, now: float) -> None:
        self._conn.execute("INSERT INTO s3_keys (access_key_id, account, secret, created) "
                           "VALUES (?, ?, ?, ?)", (access_key_id, account, sealed, now))

    def revoke(self, account: str, access_key_id: str) -> bool:
        return self._conn.execute("DELETE FROM s3_keys WHERE account = ? AND access_key_id = ?",
                                  (account, access_key_id)).rowcount > 0


class BucketRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, owner: str, name: str) -> float | None:
        """When the owner's bucket was created (None: there is none)."""
        row = self._conn.execute("SELECT created FROM s3_buckets WHERE owner = ? AND name = ?",
                                 (owner, name)).fetchone()
        return float(row[0]) if row else None

    def listing(self, owner: str) -> list[tuple[str, float]]:
        rows = self._conn.execute("SELECT name, created FROM s3_buckets WHERE owner = ? "
                                  "ORDER BY name", (owner,)).fetchall()
        return [(name, created) for name, created in rows]

    def add(self, owner: str, name: str, now: float) -> bool:
        """Create the bucket; False if the owner has it already."""
        return self._conn.execute("INSERT INTO s3_buckets (owner, name, created) VALUES "
                                  "(?, ?, ?) ON CONFLICT DO NOTHING",
                                  (owner, name, now)).rowcount > 0

    def delete(self, owner: str, name: str) -> bool:
        return self._conn.execute("DELETE FROM s3_buckets WHERE owner = ? AND name = ?",
                                  (owner, name)).rowcount > 0
