"""Objects: GetObject, HeadObject, PutObject, DeleteObject and DeleteObjects over filestore files.

An object is the file at its bucket's prefix plus its key, so it has the same bytes, queue,
plan, cache, quota and metrics as through `/files/`; only the dialect differs:

- The ETag is what S3 clients compare: the MD5 hex of the bytes (filestore records it at PUT);
  a file without one (imported before MD5s were recorded) shows its `/files/` ETag instead.
- A GET is read by the very code `/files/` reads with (`reads.serve_read`: local bytes, the
  cache, or the cloud read through the cache), with Range and the conditional headers of RFC
  9110 on that ETag, and the same sandboxing headers (the bytes never run as a page of any
  origin); only its answers are S3's (`_Answers`: its headers, its XML errors).
- A PUT's body is checked against every digest the request names (the signed
  `x-amz-content-sha256`, `Content-MD5`, an `x-amz-checksum-*` header or trailer) before the
  file is recorded: a mismatch keeps nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

import anyio
from starlette.requests import Request
from starlette.responses import Response

from .. import paths
from ..conditional import Validators, file_etag
from ..errors import BadPath, ChecksumMismatch, FilestoreError, NotFound, PreconditionFailed
from ..ranges import RangeNotSatisfiable
from ..reads import SAFE_HEADERS, byte_source, encoded, serve_read
from ..registry import FileRecord, Tables
from ..responses import FileBody, LocalBytes
from ..values import parse_content_md5
from .errors import S3Error, no_such_key, translated
from .xml import BadXML, element, group, parse, s3_document, timestamp

if TYPE_CHECKING:
    from ..service import Service

# What a presigned GET may override in the answer (S3's `response-*` parameters).
_OVERRIDES = {"response-content-type": "content-type",
              "response-content-disposition": "content-disposition",
              "response-cache-control": "cache-control",
              "response-content-language": "content-language",
              "response-content-encoding": "content-encoding",
              "response-expires": "expires"}
MAX_DELETE = 1000


def etag_of(record: FileRecord) -> str:
    """A single-part object's ETag: the MD5 of its bytes."""
    return f'"{record.md5}"' if record.md5 else file_etag(record)


def etags(tx: Tables, records: list[FileRecord]) -> dict[str, str]:
    """Each object's ETag: the one its multipart upload gave it while it still has those
    bytes, else its MD5's (one query for a page of them)."""
    kept = _kept(tx, records)
    return {r.path: kept[r.path][0] or etag_of(r) if r.path in kept else etag_of(r)
            for r in records}


def meta_of(tx: Tables, record: FileRecord) -> dict[str, str]:
    """The object's `x-amz-meta-*` headers, as it was stored with them."""
    kept = _kept(tx, [record]).get(record.path)
    return json.loads(kept[1]) if kept and kept[1] else {}


def _kept(tx: Tables, records: list[FileRecord]) -> dict[str, tuple[str | None, str | None]]:
    """{path: (etag, meta)} S3 keeps beside the files that still have the bytes they came
    with (a file replaced through `/files/` has neither)."""
    rows = tx.uploads.objects([r.path for r in records]) if records else {}
    sha256 = {r.path: r.sha256 for r in records}
    return {path: (etag, meta) for path, (digest, etag, meta) in rows.items()
            if digest == sha256[path]}


MAX_META = 2048  # S3's limit on the user metadata of an object


def user_meta(request: Request) -> dict[str, str]:
    """The request's `x-amz-meta-*` headers (names lower case): 400 past S3's 2 KiB."""
    meta = {name: value for name, value in request.headers.items()
            if name.startswith("x-amz-meta-")}
    if sum(len(name) + len(value) for name, value in meta.items()) > MAX_META:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed "
                      "metadata size (2 KiB)", 400)
    return meta


async def keep(service: Service, record: FileRecord, etag: str | None,
               meta: dict[str, str]) -> None:
    """Record what S3 keeps of a stored object beside its file (or forget what was kept)."""
    if etag is None and not meta and not service.store.registry.read.uploads.objects(
            [record.path]):
        return  # nothing to keep, nothing kept: no transaction (most PUTs)

    def write() -> None:
        with service.store.registry.transaction() as tx:
            tx.uploads.set_object(record.path, record.sha256, etag,
                                  json.dumps(meta, sort_keys=True) if meta else None)

    await anyio.to_thread.run_sync(write)


def path_of(prefix: str, key: str) -> str:
    """The filestore path of `key` in the bucket at `prefix`: the path checks `/files/` makes,
    as S3 errors."""
    if not key:
        raise S3Error("InvalidArgument", "an object needs a key", 400)
    try:
        return paths.normalize(prefix + key)
    except BadPath as exc:
        raise S3Error("InvalidArgument", f"the key cannot be stored: {exc.detail}", 400) \
            from None


# -- GET and HEAD -------------------------------------------------------------------------------


async def get(request: Request, service: Service, path: str, key: str) -> Response | FileBody:
    """GetObject and HeadObject: read as `/files/` reads (`reads.serve_read`), answered as S3."""
    try:
        return await serve_read(request, service, path,
                                lambda record: _Answers.of(request, service, record))
    except NotFound:
        raise no_such_key(key) from None
    except PreconditionFailed:
        raise S3Error("PreconditionFailed", "At least one of the preconditions you specified "
                      "did not hold", 412) from None


@dataclasses.dataclass(frozen=True)
class _Answers:
    """S3's answers to a GET or HEAD of one version of an object: its S3 ETag, the
    `response-*` overrides of a presigned GET, its `x-amz-meta-*` (not on a 304, as S3)."""

    validators: Validators
    size: int
    common: dict[str, str]  # on every answer but a 304's content-type
    meta: dict[str, str]

    @classmethod
    def of(cls, request: Request, service: Service, record: FileRecord) -> _Answers:
        etag, meta = _kept(service.store.registry.read, [record]).get(record.path, (None, None))
        validators = Validators(etag or etag_of(record), int(record.modified))
        common = {"etag": validators.etag, "last-modified": validators.http_date,
                  "content-type": record.content_type, **SAFE_HEADERS}
        for name, header in _OVERRIDES.items():
            value = request.query_params.get(name)
            if value is not None and "\n" not in value and "\r" not in value:
                common[header] = value
        return cls(validators, record.size, common, json.loads(meta) if meta else {})

    def headers(self) -> dict[str, str]:
        return {**self.common, **self.meta}

    def whole(self) -> list[tuple[bytes, bytes]]:
        return encoded({**self.headers(), "content-length": str(self.size)})

    def not_modified(self) -> Response:
        headers = dict(self.common)
        headers.pop("content-type")
        return Response(status_code=304, headers=headers)

    def not_satisfiable(self, exc: RangeNotSatisfiable) -> NoReturn:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416) from None


# -- PUT ------------------------------------------------------------------------------------


def content_md5(request: Request) -> str | None:
    """`Content-MD5` (base64) as hex; 400 `InvalidDigest` when it is not an MD5."""
    raw = request.headers.get("content-md5")
    if raw is None:
        return None
    try:
        return parse_content_md5(raw)
    except ValueError:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid",
                      400) from None


async def put(service: Service, path: str, body: AsyncIterator[bytes], *,
              content_type: str | None, content_length: int | None, expect_sha256: str | None,
              expect_md5: str | None, meta: dict[str, str]) -> Response:
    try:
        record, _ = await service.put(path, body, content_type=content_type,
                                      content_length=content_length, expect_sha256=expect_sha256,
                                      expect_md5=expect_md5)
    except ChecksumMismatch as exc:
        if exc.digest == "sha256" and expect_sha256 is not None:
            raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                          "header does not match what was computed.", 400) from None
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                      "received.", 400) from None
    await keep(service, record, None, meta)
    return Response(status_code=200, headers={"etag": etag_of(record)})


# -- COPY ---------------------------------------------------------------------------------


_COPY_CHUNK = 1024 * 1024


@contextlib.asynccontextmanager
async def source_bytes(service: Service, source_path: str, source_key: str,
                       first: int = 0, last: int | None = None
                       ) -> AsyncIterator[tuple[FileRecord, AsyncIterator[bytes]]]:
    """The record of the object at `source_path` and its bytes `first`..`last` (inclusive;
    all by default): local, cached, or read through the cache from the cloud; the source is
    closed on leaving, read or not."""
    try:
        record, fd, _ = await service.open_current(source_path)
    except NotFound:
        raise no_such_key(source_key) from None
    end = record.size - 1 if last is None else last
    if first < 0 or end >= record.size or (first > end and record.size):
        if fd is not None:
            os.close(fd)
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    source = await byte_source(service, record, LocalBytes(fd) if fd is not None else None,
                               [(first, end)])

    async def body() -> AsyncIterator[bytes]:
        offset = first
        while offset <= end:
            chunk = await source.read(min(_COPY_CHUNK, end + 1 - offset), offset)
            if not chunk:
                raise S3Error("InternalError", "the source ended early", 500)
            offset += len(chunk)
            yield bytes(chunk)

    try:
        yield record, body()
    finally:
        await source.aclose()


async def copy(service: Service, source_path: str, source_key: str, path: str, *,
               content_type: str | None, meta: dict[str, str] | None) -> bytes:
    """CopyObject within filestore: the source's bytes (local, cached or read through the
    cache from the cloud) are stored at `path` as a PUT would store them, checked against the
    source's SHA-256; no byte goes through the client. `content_type` and `meta` (REPLACE)
    or the source's (COPY, the default: None)."""
    async with source_bytes(service, source_path, source_key) as (record, body):
        if meta is None:
            meta = meta_of(service.store.registry.read, record)
        copied, _ = await service.put(path, body, content_type=content_type or
                                      record.content_type, content_length=record.size,
                                      expect_sha256=record.sha256)
    await keep(service, copied, None, meta)
    return s3_document("CopyObjectResult", [element("LastModified", timestamp(copied.modified)),
                                            element("ETag", etag_of(copied))])


# -- DELETE ---------------------------------------------------------------------------------


async def delete(service: Service, path: str) -> Response:
    """204 whether or not there was an object, as S3 answers."""
    with contextlib.suppress(NotFound):
        await service.delete(path)
    return Response(status_code=204)


async def delete_many(service: Service, prefix: str, body: bytes) -> bytes:
    """DeleteObjects: up to 1000 keys; each one's result (all but errors when Quiet)."""
    try:
        root = parse(body)
    except BadXML as exc:
        raise S3Error("MalformedXML", str(exc), 400) from None
    if root.tag != "Delete":
        raise S3Error("MalformedXML", "expected a <Delete> document", 400)
    keys = [node.findtext("Key") or "" for node in root.findall("Object")]
    if not keys or len(keys) > MAX_DELETE:
        raise S3Error("MalformedXML", f"send 1 to {MAX_DELETE} <Object> keys", 400)
    quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
    results: list[str] = []
    for key in keys:
        try:
            await delete(service, path_of(prefix, key))
        except (S3Error, FilestoreError) as exc:  # one key's failure is that key's answer
            error = exc if isinstance(exc, S3Error) else translated(exc)
            results.append(group("Error", [element("Key", key), element("Code", error.code),
                                           element("Message", error.message)]))
            continue
        if not quiet:
            results.append(group("Deleted", [element("Key", key)]))
    return s3_document("DeleteResult", results)
