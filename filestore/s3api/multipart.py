"""Multipart uploads: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads.

Each part is received as any body is (a temp file, hashed as it streams, checked against the
digests the request names), then renamed into `data_dir/s3-uploads/UPLOAD_ID/`, and recorded in
the registry with its size and MD5 (its ETag). A part sent again replaces the earlier one.
Complete checks the list the client sends (ascending part numbers: `InvalidPartOrder`; each part
there with that ETag: `InvalidPart`; every part but the last at least 5 MiB: `EntityTooSmall`),
then streams the parts in order into one ordinary PUT of the object, so it is installed
atomically as one file with the same checks, queue and quota as any other; no part is ever held
in memory. Its ETag is S3's: the MD5 of the parts' MD5s, "-" and their count. An account's
quota caps the parts of all its open uploads together (`quota.part_room`), before a part's bytes
arrive and again in the transaction that records it (so two parts at once cannot both fit).

Unfinished uploads are kept across restarts and expire after `s3.multipart_expiry`; a sweep
(each hour, and at start when the server is alone) removes them, and what a crash left in the
uploads' directory (a part file no row names, a directory of an upload no row has).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from starlette.responses import Response

from .. import logs
from ..errors import ChecksumMismatch, QuotaExceeded, RegistryUnavailable, TooLarge
from ..fsutil import fsync_dir
from ..quota import part_room, quota_text
from ..registry import Part, Upload
from .buckets import Caller
from .errors import S3Error
from .whole import whole_number
from .xml import BadXML, element, group, parse, s3_document, timestamp

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("filestore.s3")

UPLOADS = "s3-uploads"
MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PART = 5 * 1024**3
MAX_PARTS = 10_000
SWEEP_SECONDS = 3600.0
_READ = 1024 * 1024


def _dir(service: Service, upload_id: str) -> Path:
    return service.store.datadir.root / UPLOADS / upload_id


def _no_such_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be "
                   f"invalid, or the upload may have been aborted or completed: {upload_id[:80]}",
                   404)


def _upload(service: Service, caller: Caller, bucket: str, key: str, upload_id: str) -> Upload:
    found = service.store.registry.read.uploads.get(upload_id)
    if found is None or (found.owner, found.bucket, found.key) != (caller.account, bucket, key):
        raise _no_such_upload(upload_id)  # another's upload is no upload of this caller's
    return found


def part_number(raw: str | None) -> int:
    number = whole_number(raw, 5)
    if number is None or not 1 <= number <= MAX_PARTS:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{MAX_PARTS}, inclusive", 400)
    return number


# -- the operations ------------------------------------------------------------------------------


def create(service: Service, caller: Caller, bucket: str, key: str, path: str,
           content_type: str | None, meta: dict[str, str]) -> bytes:
    upload = Upload(uuid.uuid4().hex, caller.account, bucket, key, path, content_type,
                    json.dumps(meta, sort_keys=True) if meta else None, time.time())
    with service.store.registry.transaction() as tx:
        tx.uploads.create(upload)
    return s3_document("InitiateMultipartUploadResult", [
        element("Bucket", bucket), element("Key", key), element("UploadId", upload.upload_id)])


async def upload_part(service: Service, caller: Caller, bucket: str, key: str, upload_id: str,
                      number: int, body: AsyncIterator[bytes], length: int | None,
                      expect_sha256: str | None, expect_md5: str | None) -> Response:
    upload = _upload(service, caller, bucket, key, upload_id)
    store = service.store
    # Within the object's size limit and the quota (every open upload of the account's counted):
    # refused before a byte when the declared length says so, cut off as soon as the stream
    # passes it; the quota checked again where the part is recorded.
    others, room = part_room(store.registry.read, upload, number)
    size_limit = min(MAX_PART, store.settings.storage.max_upload_size - others)
    if room is not None and length is not None and length > room:
        raise QuotaExceeded(quota_text(upload.path, length, room))
    limit = size_limit if room is None else min(size_limit, room)
    if length is not None and length > limit:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed "
                      "size", 400)
    try:
        received = await store.local.receive(body, max(limit, 0), store.events.make_room,
                                             length or 0)
    except TooLarge:
        if room is not None and room < size_limit:
            raise QuotaExceeded(quota_text(upload.path, None, room)) from None
        raise
    try:
        if expect_sha256 is not None and expect_sha256 != received.sha256:
            raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                          "header does not match what was computed.", 400)
        if expect_md5 is not None and expect_md5 != received.md5:
            raise ChecksumMismatch("Content-MD5 does not match the part", "md5")
        name = f"{number}-{uuid.uuid4().hex[:12]}"
        await anyio.to_thread.run_sync(_install, received.tmp, _dir(service, upload_id), name)
    except BaseException:
        store.local.discard(received)
        raise
    part = Part(number, received.size, received.md5, name, time.time())

    def record() -> str | None:
        with store.registry.transaction() as tx:
            if tx.uploads.get(upload_id) is None:  # aborted or completed meanwhile
                raise _no_such_upload(upload_id)
            _, room = part_room(tx, upload, number)  # other parts may have used it meanwhile
            if room is not None and part.size > room:
                raise QuotaExceeded(quota_text(upload.path, part.size, room))
            return tx.uploads.put_part(upload_id, part)

    try:
        replaced = await anyio.to_thread.run_sync(record)
    except BaseException:
        with contextlib.suppress(OSError):
            (_dir(service, upload_id) / name).unlink()
        raise
    if replaced is not None:
        with contextlib.suppress(OSError):
            (_dir(service, upload_id) / replaced).unlink()
    return Response(status_code=200, headers={"etag": f'"{part.md5}"'})


def _install(tmp: Path, directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, directory / name)
    fsync_dir(directory)


async def complete(service: Service, caller: Caller, bucket: str, key: str, upload_id: str,
                   body: bytes) -> bytes:
    upload = _upload(service, caller, bucket, key, upload_id)
    wanted = _parts_asked(body)
    held = {p.number: p for p in service.store.registry.read.uploads.parts(upload_id)}
    chosen: list[Part] = []
    for number, etag in wanted:
        part = held.get(number)
        if part is None or etag.strip('"').lower() != part.md5:
            raise S3Error("InvalidPart", "One or more of the specified parts could not be "
                          f"found, or its ETag did not match: part {number}", 400)
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum "
                          f"allowed object size: part {part.number} is {part.size} bytes", 400)
    directory = _dir(service, upload_id)
    record, _ = await service.put(upload.path, _assembled(directory, chosen),
                                  content_type=upload.content_type,
                                  content_length=sum(p.size for p in chosen))
    etag = (f'"{hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in chosen)).hexdigest()}'
            f'-{len(chosen)}"')

    def finish() -> None:
        with service.store.registry.transaction() as tx:
            tx.uploads.set_object(record.path, record.sha256, etag, upload.meta)
            tx.uploads.delete(upload_id)
        shutil.rmtree(directory, ignore_errors=True)

    await anyio.to_thread.run_sync(finish)
    logs.event(log, "s3.upload_completed", "multipart upload of {path!r} completed: {parts} "
               "parts, {size:,} bytes", path=record.path, parts=len(chosen), size=record.size)
    return s3_document("CompleteMultipartUploadResult", [
        element("Location", f"/{bucket}/{key}"), element("Bucket", bucket),
        element("Key", key), element("ETag", etag)])


def _parts_asked(body: bytes) -> list[tuple[int, str]]:
    try:
        root = parse(body)
    except BadXML as exc:
        raise S3Error("MalformedXML", str(exc), 400) from None
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML", "expected a <CompleteMultipartUpload> document", 400)
    asked = []
    for node in root.findall("Part"):
        number = part_number((node.findtext("PartNumber") or "").strip())
        asked.append((number, (node.findtext("ETag") or "").strip()))
    if not asked:
        raise S3Error("MalformedXML", "name at least one <Part>", 400)
    numbers = [number for number, _ in asked]
    if numbers != sorted(set(numbers)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. The "
                      "parts list must be specified in order by part number.", 400)
    return asked


async def _assembled(directory: Path, parts: list[Part]) -> AsyncIterator[bytes]:
    """The parts' bytes in order, a MiB at a time, each part checked for its size."""
    for part in parts:
        handle = await anyio.open_file(directory / part.file, "rb")
        try:
            read = 0
            while chunk := await handle.read(_READ):
                read += len(chunk)
                yield chunk
            if read != part.size:
                raise S3Error("InvalidPart", f"part {part.number} changed on disk", 400)
        finally:
            await handle.aclose()


def abort(service: Service, caller: Caller, bucket: str, key: str, upload_id: str) -> None:
    _upload(service, caller, bucket, key, upload_id)
    with service.store.registry.transaction() as tx:
        tx.uploads.delete(upload_id)
    shutil.rmtree(_dir(service, upload_id), ignore_errors=True)


def list_parts(service: Service, caller: Caller, bucket: str, key: str, upload_id: str,
               after: int, limit: int) -> bytes:
    _upload(service, caller, bucket, key, upload_id)
    parts = service.store.registry.read.uploads.parts(upload_id, after, limit + 1)
    shown, truncated = parts[:limit], len(parts) > limit
    return s3_document("ListPartsResult", [
        element("Bucket", bucket), element("Key", key), element("UploadId", upload_id),
        element("PartNumberMarker", after), element("MaxParts", limit),
        element("IsTruncated", truncated),
        element("NextPartNumberMarker", shown[-1].number if truncated else None),
        *(group("Part", [element("PartNumber", p.number),
                         element("LastModified", timestamp(p.created)),
                         element("ETag", f'"{p.md5}"'), element("Size", p.size)])
          for p in shown)])


def list_uploads(service: Service, caller: Caller, bucket: str, prefix: str,
                 after: tuple[str, str], limit: int) -> bytes:
    found = service.store.registry.read.uploads.listing(caller.account, bucket, prefix, after,
                                                        limit + 1)
    shown, truncated = found[:limit], len(found) > limit
    return s3_document("ListMultipartUploadsResult", [
        element("Bucket", bucket), element("Prefix", prefix), element("MaxUploads", limit),
        element("IsTruncated", truncated),
        element("NextKeyMarker", shown[-1].key if truncated else None),
        element("NextUploadIdMarker", shown[-1].upload_id if truncated else None),
        *(group("Upload", [element("Key", u.key), element("UploadId", u.upload_id),
                           element("Initiated", timestamp(u.created))]) for u in shown)])


# -- expiry and what a crash left --------------------------------------------------------------


def sweep(service: Service, expiry: float) -> int:
    """Remove uploads older than `expiry` seconds, and the files no upload or part names; how
    many uploads went."""
    registry = service.store.registry
    reader = registry.open_reader()  # this runs in a worker thread
    gone = 0
    try:
        while expired := reader.uploads.older_than(time.time() - expiry, 500):
            for upload_id in expired:
                with registry.transaction() as tx:
                    tx.uploads.delete(upload_id)
                shutil.rmtree(_dir(service, upload_id), ignore_errors=True)
                gone += 1
        root = service.store.datadir.root / UPLOADS
        if root.is_dir():
            live = reader.uploads.ids()
            for entry in root.iterdir():
                if entry.name not in live:
                    if _stale(entry):  # (not one being created right now)
                        shutil.rmtree(entry, ignore_errors=True)
                    continue
                named = {p.file for p in reader.uploads.parts(entry.name)}
                for file in entry.iterdir():
                    if file.name not in named and _stale(file):
                        file.unlink(missing_ok=True)
    finally:
        reader.close()
    if gone:
        logs.event(log, "s3.uploads_expired", "removed {count} unfinished multipart uploads "
                   "older than s3.multipart_expiry", count=gone)
    return gone


def _stale(file: Path) -> bool:
    """Old enough not to be a part (or an upload's directory) being recorded right now."""
    try:
        return time.time() - file.stat().st_mtime > 3600
    except OSError:
        return False


async def sweep_every(service: Service) -> None:
    """The server's background task: a sweep each hour."""
    while True:
        try:
            await anyio.to_thread.run_sync(sweep, service, service.settings.s3.multipart_expiry)
        except RegistryUnavailable as exc:  # the registry's server away: no traceback
            log.warning("s3: the sweep of unfinished multipart uploads failed: %s; the next "
                        "one is in %.0f s", exc.detail, SWEEP_SECONDS)
        except Exception:
            log.exception("s3: the sweep of unfinished multipart uploads failed")
        await anyio.sleep(SWEEP_SECONDS)
