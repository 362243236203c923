"""The S3 endpoint's tables: access keys (their secrets as stored: encrypted), buckets, and
multipart uploads with their parts and the ETags of what they assembled."""

from __future__ import annotations

import dataclasses
import sqlite3

from .counters import MAX_CHAR


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


@dataclasses.dataclass(frozen=True)
class Upload:
    upload_id: str
    owner: str
    bucket: str
    key: str
    path: str
    content_type: str | None
    meta: str | None  # x-amz-meta-* as JSON
    created: float


@dataclasses.dataclass(frozen=True)
class Part:
    number: int
    size: int
    md5: str
    file: str
    created: float


_UPLOAD = "upload_id, owner, bucket, key, path, content_type, meta, created"


class UploadRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def create(self, upload: Upload) -> None:
        self._conn.execute(f"INSERT INTO s3_uploads ({_UPLOAD}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           dataclasses.astuple(upload))

    def get(self, upload_id: str) -> Upload | None:
        row = self._conn.execute(f"SELECT {_UPLOAD} FROM s3_uploads WHERE upload_id = ?",
                                 (upload_id,)).fetchone()
        return Upload(*row) if row else None

    def listing(self, owner: str, bucket: str, prefix: str, after: tuple[str, str],
                limit: int) -> list[Upload]:
        """The bucket's uploads under `prefix` in (key, upload id) order, after `after`."""
        rows = self._conn.execute(
            f"SELECT {_UPLOAD} FROM s3_uploads WHERE owner = ? AND bucket = ? AND key >= ? "
            "AND key < ? AND (key, upload_id) > (?, ?) ORDER BY key, upload_id LIMIT ?",
            (owner, bucket, prefix, prefix + MAX_CHAR, *after, limit)).fetchall()
        return [Upload(*row) for row in rows]

    def older_than(self, when: float, limit: int) -> list[str]:
        rows = self._conn.execute("SELECT upload_id FROM s3_uploads WHERE created < ? "
                                  "ORDER BY created LIMIT ?", (when, limit)).fetchall()
        return [upload_id for (upload_id,) in rows]

    def ids(self) -> set[str]:
        return {upload_id for (upload_id,) in
                self._conn.execute("SELECT upload_id FROM s3_uploads").fetchall()}

    def parts(self, upload_id: str, after: int = 0, limit: int = 10_000) -> list[Part]:
        rows = self._conn.execute(
            "SELECT number, size, md5, file, created FROM s3_parts WHERE upload_id = ? "
            "AND number > ? ORDER BY number LIMIT ?", (upload_id, after, limit)).fetchall()
        return [Part(*row) for row in rows]

    def part_bytes(self, prefix: str, upload_id: str, number: int) -> dict[str, int]:
        """{upload id: the bytes of its parts} of every open upload to a path under `prefix`
        that has any, part `number` of upload `upload_id` left out (the one a part of that
        number replaces). One query for all of them: an account's open uploads share its quota.
        The uploads are few (they expire), so a scan of them needs no index on their paths."""
        rows = self._conn.execute(
            "SELECT p.upload_id, SUM(p.size) FROM s3_uploads AS u JOIN s3_parts AS p "
            "ON p.upload_id = u.upload_id WHERE u.path >= ? AND u.path < ? "
            "AND NOT (p.upload_id = ? AND p.number = ?) GROUP BY p.upload_id",
            (prefix, prefix + MAX_CHAR, upload_id, number)).fetchall()
        return {upload: int(size) for upload, size in rows}

    def put_part(self, upload_id: str, part: Part) -> str | None:
        """Record a part (replacing one of its number); the replaced part's file, if any."""
        old = self._conn.execute("SELECT file FROM s3_parts WHERE upload_id = ? AND number = ?",
                                 (upload_id, part.number)).fetchone()
        self._conn.execute(
            "INSERT INTO s3_parts (upload_id, number, size, md5, file, created) VALUES "
            "(?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, number) DO UPDATE SET size = "
            "excluded.size, md5 = excluded.md5, file = excluded.file, created = excluded.created",
            (upload_id, *dataclasses.astuple(part)))
        return str(old[0]) if old else None

    def delete(self, upload_id: str) -> bool:
        self._conn.execute("DELETE FROM s3_parts WHERE upload_id = ?", (upload_id,))
        return self._conn.execute("DELETE FROM s3_uploads WHERE upload_id = ?",
                                  (upload_id,)).rowcount > 0

    def set_object(self, path: str, sha256: str, etag: str | None, meta: str | None) -> None:
        """What S3 keeps of the object at `path` beside its file (nothing: the row goes)."""
        if etag is None and meta is None:
            self._conn.execute("DELETE FROM s3_objects WHERE path = ?", (path,))
            return
        self._conn.execute("INSERT INTO s3_objects (path, sha256, etag, meta) VALUES "
                           "(?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET sha256 = "
                           "excluded.sha256, etag = excluded.etag, meta = excluded.meta",
                           (path, sha256, etag, meta))

    def objects(self, paths: list[str]) -> dict[str, tuple[str, str | None, str | None]]:
        """{path: (sha256, etag, meta)} of what S3 keeps of these paths' objects."""
        if not paths:
            return {}
        marks = ", ".join("?" * len(paths))
        rows = self._conn.execute(f"SELECT path, sha256, etag, meta FROM s3_objects WHERE "
                                  f"path IN ({marks})", paths).fetchall()
        return {path: (sha256, etag, meta) for path, sha256, etag, meta in rows}
