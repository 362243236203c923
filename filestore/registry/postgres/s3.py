"""The S3 endpoint's tables in PostgreSQL (see `registry/s3.py`): access keys, buckets, multipart
uploads with their parts, and what S3 keeps of an object beside its file."""

from __future__ import annotations

import dataclasses

from ..counters import MAX_CHAR
from ..s3 import _UPLOAD, Part, Upload
from .link import Link


class S3KeyRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def get(self, access_key_id: str) -> tuple[str, str, float] | None:
        row = self._link.one("SELECT account, secret, created FROM s3_keys "
                             "WHERE access_key_id = %s", (access_key_id,))
        return (row[0], row[1], row[2]) if row else None

    def listing(self, account: str) -> list[tuple[str, float]]:
        return [(key, created) for key, created in self._link.rows(
            "SELECT access_key_id, created FROM s3_keys WHERE account = %s "
            "ORDER BY created, access_key_id", (account,))]

    def add(self, access_key_id: str, account: str, sealed: str, now: float) -> None:
        self._link.execute("INSERT INTO s3_keys (access_key_id, account, secret, created) "
                           "VALUES (%s, %s, %s, %s)", (access_key_id, account, sealed, now))

    def revoke(self, account: str, access_key_id: str) -> bool:
        return self._link.count("DELETE FROM s3_keys WHERE account = %s AND "
                                "access_key_id = %s", (account, access_key_id)) > 0


class BucketRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def get(self, owner: str, name: str) -> float | None:
        value = self._link.value("SELECT created FROM s3_buckets WHERE owner = %s AND name = %s",
                                 (owner, name))
        return float(value) if value is not None else None

    def listing(self, owner: str) -> list[tuple[str, float]]:
        return [(name, created) for name, created in self._link.rows(
            "SELECT name, created FROM s3_buckets WHERE owner = %s ORDER BY name", (owner,))]

    def add(self, owner: str, name: str, now: float) -> bool:
        return self._link.count("INSERT INTO s3_buckets (owner, name, created) VALUES "
                                "(%s, %s, %s) ON CONFLICT DO NOTHING", (owner, name, now)) > 0

    def delete(self, owner: str, name: str) -> bool:
        return self._link.count("DELETE FROM s3_buckets WHERE owner = %s AND name = %s",
                                (owner, name)) > 0


class UploadRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def create(self, upload: Upload) -> None:
        self._link.execute(f"INSERT INTO s3_uploads ({_UPLOAD}) VALUES "
                           "(%s, %s, %s, %s, %s, %s, %s, %s)", dataclasses.astuple(upload))

    def get(self, upload_id: str) -> Upload | None:
        row = self._link.one(f"SELECT {_UPLOAD} FROM s3_uploads WHERE upload_id = %s",
                             (upload_id,))
        return Upload(*row) if row else None

    def listing(self, owner: str, bucket: str, prefix: str, after: tuple[str, str],
                limit: int) -> list[Upload]:
        return [Upload(*row) for row in self._link.rows(
            f"SELECT {_UPLOAD} FROM s3_uploads WHERE owner = %s AND bucket = %s AND key >= %s "
            "AND key < %s AND (key, upload_id) > (%s, %s) ORDER BY key, upload_id LIMIT %s",
            (owner, bucket, prefix, prefix + MAX_CHAR, *after, limit))]

    def older_than(self, when: float, limit: int) -> list[str]:
        return [upload_id for (upload_id,) in self._link.rows(
            "SELECT upload_id FROM s3_uploads WHERE created < %s ORDER BY created LIMIT %s",
            (when, limit))]

    def ids(self) -> set[str]:
        return {upload_id for (upload_id,) in self._link.rows("SELECT upload_id FROM s3_uploads")}

    def parts(self, upload_id: str, after: int = 0, limit: int = 10_000) -> list[Part]:
        return [Part(*row) for row in self._link.rows(
            "SELECT number, size, md5, file, created FROM s3_parts WHERE upload_id = %s "
            "AND number > %s ORDER BY number LIMIT %s", (upload_id, after, limit))]

    def part_bytes(self, prefix: str, upload_id: str, number: int) -> dict[str, int]:
        return {upload: int(size) for upload, size in self._link.rows(  # SUM: a numeric
            "SELECT p.upload_id, SUM(p.size) FROM s3_uploads AS u JOIN s3_parts AS p "
            "ON p.upload_id = u.upload_id WHERE u.path >= %s AND u.path < %s "
            "AND NOT (p.upload_id = %s AND p.number = %s) GROUP BY p.upload_id",
            (prefix, prefix + MAX_CHAR, upload_id, number))}

    def put_part(self, upload_id: str, part: Part) -> str | None:
        old = self._link.value("SELECT file FROM s3_parts WHERE upload_id = %s AND number = %s",
                               (upload_id, part.number))
        self._link.execute(
            "INSERT INTO s3_parts (upload_id, number, size, md5, file, created) VALUES "
            "(%s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id, number) DO UPDATE SET size = "
            "excluded.size, md5 = excluded.md5, file = excluded.file, created = excluded.created",
            (upload_id, *dataclasses.astuple(part)))
        return str(old) if old is not None else None

    def delete(self, upload_id: str) -> bool:
        self._link.execute("DELETE FROM s3_parts WHERE upload_id = %s", (upload_id,))
        return self._link.count("DELETE FROM s3_uploads WHERE upload_id = %s",
                                (upload_id,)) > 0

    def set_object(self, path: str, sha256: str, etag: str | None, meta: str | None) -> None:
        if etag is None and meta is None:
            self._link.execute("DELETE FROM s3_objects WHERE path = %s", (path,))
            return
        self._link.execute("INSERT INTO s3_objects (path, sha256, etag, meta) VALUES "
                           "(%s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET sha256 = "
                           "excluded.sha256, etag = excluded.etag, meta = excluded.meta",
                           (path, sha256, etag, meta))

    def objects(self, paths: list[str]) -> dict[str, tuple[str, str | None, str | None]]:
        if not paths:
            return {}
        return {path: (sha256, etag, meta) for path, sha256, etag, meta in self._link.rows(
            "SELECT path, sha256, etag, meta FROM s3_objects WHERE path = ANY(%s)", (paths,))}
