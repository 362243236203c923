"""`s3://bucket/prefix`: AWS S3 or any S3-compatible store, through aioboto3.

One client per remote, opened in the server's lifespan and reused. Uploads carry a SHA-256
checksum (whole object, or per part for multipart uploads) and are verified before they count: by
the checksum the store reports in its answer (it checks ours before answering), else by a HEAD
(size, and the checksum or ETag the store reports).

Multipart above `multipart_threshold`: parts of `part_size`, each read and hashed in one thread
call, at most `_PARTS_IN_FLIGHT` in memory at once, so a 1 GiB upload costs tens of MiB. A failed
multipart upload is aborted; one left open by a crash is aborted by `cleanup()` at the next start.

botocore's errors are translated here, once, into `RemoteError` (permanent: credentials, access,
bucket) or `RemoteUnavailable` (retryable: network, 5xx, throttling).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import aioboto3
import aiohttp
import anyio
import botocore.exceptions
from botocore.config import Config

from ..config import RemoteSettings
from ..errors import RemoteError, RemoteIntegrityError, RemoteNotFound, RemoteUnavailable
from .base import InFlight, RemoteObject, arrived_chunks

log = logging.getLogger("filestore.remote")

CHUNK_SIZE = 1024 * 1024
MAX_PARTS = 10_000
_PARTS_IN_FLIGHT = 4
_PERMANENT_CODES = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "NoSuchBucket", "InvalidBucketName", "AccountProblem", "InvalidToken", "ExpiredToken",
    "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidRequest", "MethodNotAllowed",
    "NotImplemented", "EntityTooLarge", "InvalidArgument", "403", "400", "405",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# 4xx codes that are passing conditions, not mistakes: checked before the 4xx-is-permanent rule.
_TRANSIENT_CODES = {
    "RequestTimeout", "Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded",
    "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "PriorRequestNotComplete",
}
_INTEGRITY_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def translate(exc: BaseException, what: str) -> RemoteError:
    """The one place that decides what a botocore/aiohttp failure means for filestore."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND_CODES:
            return RemoteNotFound(f"{what}: not found")
        if code in _INTEGRITY_CODES:
            return RemoteIntegrityError(f"{what}: the store rejected the checksum ({code})")
        if code in _TRANSIENT_CODES:
            return RemoteUnavailable(f"{what}: {code}: {message}")
        if code in _PERMANENT_CODES or (400 <= status < 500 and status not in (408, 429)):
            return RemoteError(f"{what}: {code}: {message}")
        return RemoteUnavailable(f"{what}: {code or status}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.NoRegionError
                  | botocore.exceptions.ParamValidationError):
        return RemoteError(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError | aiohttp.ClientError | OSError
                  | asyncio.TimeoutError):
        return RemoteUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return RemoteError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translated(what: str) -> Any:
    try:
        yield
    except RemoteError:
        raise
    except (TimeoutError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
            aiohttp.ClientError, OSError) as exc:
        raise translate(exc, what) from None


async def _body_chunks(body: Any) -> AsyncIterator[bytes]:
    """A response body's bytes in the pieces the connection delivered (`arrived_chunks`): no
    joining copy (botocore's `iter_chunks` made one of every byte downloaded, a tenth of a
    cache fill's CPU in bench/miss.py). `get` counts the bytes too."""
    content = getattr(getattr(body, "__wrapped__", None), "content", None)
    if content is None or not hasattr(content, "readchunk"):  # not aiohttp underneath
        async for chunk in body.iter_chunks(CHUNK_SIZE):
            yield chunk
        return
    async for chunk in arrived_chunks(content):
        yield chunk


class S3Remote:
    def __init__(self, name: str, bucket: str, prefix: str, settings: RemoteSettings, *,
                 scope: str = "") -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        # The paths this remote holds start with `scope` (an account's remote: "ACCOUNT/"):
        # listings and the clean-up after a crash look there only.
        self.scope = scope
        where = f" at {_without_userinfo(settings.endpoint_url)}" if settings.endpoint_url else ""
        self.display_url = f"s3://{bucket}/{self.prefix}{where}"
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()

    def __repr__(self) -> str:
        return f"S3Remote({self.name!r}, {self.display_url!r})"

    def key_for(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _path_of(self, key: str) -> str:
        """The file path a key of this remote stands for (`key_for` undone)."""
        return key[len(self.prefix) + 1:] if self.prefix else key

    async def open(self) -> None:
        try:
            await self._open()
        except RemoteError:
            raise
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            # A malformed endpoint URL or region: botocore says so only when the client opens.
            raise RemoteError(f"cannot open {self.display_url}: {exc}") from None

    async def _open(self) -> None:
        settings = self.settings
        style = settings.addressing_style
        if style == "auto":
            style = "path" if settings.endpoint_url else "virtual"
        config = Config(
            s3={"addressing_style": style},
            # Checksums are filestore's own (SHA-256, sent explicitly); botocore's default CRC32
            # trailers are not understood by every S3-compatible store.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=settings.max_connections,
            connect_timeout=10,
            read_timeout=60,
            # filestore's own retry policy (queue/retry.py) decides; botocore retrying inside
            # it would multiply attempts and hide outages behind its own backoff.
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        credentials = {}
        if settings.access_key_id:
            credentials = {"aws_access_key_id": settings.access_key_id,
                           "aws_secret_access_key": settings.secret_access_key}
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=settings.endpoint_url or None,
                           region_name=settings.region or None, config=config, **credentials)
        )

    async def close(self) -> None:
        await self._stack.aclose()

    # -- upload -----------------------------------------------------------------------------------

    async def put(self, path: str, source: BinaryIO, size: int, sha256: str,
                  content_type: str, md5: str | None = None) -> RemoteObject:
        key = self.key_for(path)
        what = f"upload of {path!r} to {self.display_url}"
        with _translated(what):
            if size > self.settings.multipart_threshold:
                response = await self._put_multipart(key, source, size, sha256, content_type)
                expected = response["expected"]
            else:
                if md5 is None:  # recorded without one: one pass over the bytes
                    md5 = await anyio.to_thread.run_sync(_md5_of, source, size)
                source.seek(0)
                expected = _b64(bytes.fromhex(sha256))
                response = await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=source, ContentLength=size,
                    ContentType=content_type, ChecksumAlgorithm="SHA256", ChecksumSHA256=expected,
                    ContentMD5=_b64(bytes.fromhex(md5)),
                )
            etag = response.get("ETag", "")
            confirmed = response.get("ChecksumSHA256")
            if confirmed is not None and confirmed.split("-")[0] != expected:
                raise RemoteIntegrityError(f"{what}: stored checksum {confirmed}, sent {expected}")
            # S3 checks both digests against the bytes it received before answering (BadDigest),
            # but a store may echo the checksum header without checking it: moto stores an empty
            # object for a body sent as application/x-www-form-urlencoded and still answers with
            # our checksum. A single-part object's ETag is the MD5 the store computed of what it
            # stored: equal to ours, that is the proof. Otherwise (a multipart upload, or a store
            # whose ETags are not MD5s, as with SSE-KMS) a HEAD confirms the stored size.
            if size <= self.settings.multipart_threshold and etag.strip('"') == md5:
                return RemoteObject(path, size, etag=etag, sha256=sha256)
            head = await self._client.head_object(Bucket=self.bucket, Key=key,
                                                  ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256")
        if head["ContentLength"] != size:
            raise RemoteIntegrityError(f"{what}: stored {head['ContentLength']} bytes, sent {size}")
        if stored is not None and stored.split("-")[0] != expected:
            raise RemoteIntegrityError(f"{what}: stored checksum {stored}, sent {expected}")
        if stored is None and etag and head.get("ETag") != etag:
            raise RemoteIntegrityError(f"{what}: stored ETag {head.get('ETag')}, sent {etag}")
        return RemoteObject(path, size, etag=head.get("ETag", etag), sha256=sha256)

    async def _put_multipart(self, key: str, source: BinaryIO, size: int, sha256: str,
                             content_type: str) -> dict[str, Any]:
        """Upload in parts; the completion's answer, plus `expected`: the composite checksum
        (base64 SHA-256 of the parts' SHA-256s) a store should report.

        Each part streams from the file through a window of its own (nothing is held in
        memory); its SHA-256 is computed first, in one thread call per part. Parts are hashed
        in order, feeding one whole-file hash too, which must equal the recorded `sha256`
        before the upload is completed: bytes that changed on disk are never reported as a
        verified copy."""
        part_size = max(self.settings.part_size, -(-size // MAX_PARTS))
        count = -(-size // part_size)
        created = await self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256"
        )
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = [{} for _ in range(count)]
        digests: list[bytes] = [b""] * count
        whole = hashlib.sha256()
        hashed = [anyio.Event() for _ in range(count + 1)]  # hashed[n]: parts 1..n are hashed
        hashed[0].set()
        fd = source.fileno()
        try:
            slots = anyio.Semaphore(_PARTS_IN_FLIGHT)

            async def send(number: int) -> None:
                try:
                    offset = (number - 1) * part_size
                    length = min(part_size, size - offset)
                    await hashed[number - 1].wait()
                    part = hashlib.sha256()
                    await anyio.to_thread.run_sync(_hash_range, fd, offset, length, part, whole)
                    digest = part.digest()
                    hashed[number].set()
                    digests[number - 1] = digest
                    response = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=FileWindow(fd, offset, length), ContentLength=length,
                        ChecksumSHA256=_b64(digest),
                    )
                    parts[number - 1] = {"PartNumber": number, "ETag": response["ETag"],
                                         "ChecksumSHA256": _b64(digest)}
                finally:
                    slots.release()

            try:
                async with anyio.create_task_group() as tg:
                    for number in range(1, count + 1):
                        await slots.acquire()  # bounds the parts in flight
                        tg.start_soon(send, number)
            except ExceptionGroup as group:
                raise _first_error(group) from None  # so it is translated like any other
            if whole.hexdigest() != sha256:
                raise RemoteError(
                    f"the local bytes of {key!r} no longer match their recorded sha256 "
                    f"({sha256}); run filestore verify"
                )
            done = await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                          UploadId=upload_id)
            raise
        return {**done, "expected": _b64(hashlib.sha256(b"".join(digests)).digest())}

    async def cleanup(self, in_flight: InFlight | None = None) -> int:
        """Abort multipart uploads under the prefix left open by a crash; how many. Never one
        begun after this process started, nor one of a path another node uploads now."""
        aborted = 0
        started_before = time.time()
        with _translated(f"listing unfinished uploads in {self.display_url}"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket,
                                                 Prefix=self.key_for(self.scope)):
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    if initiated is not None and initiated.timestamp() > started_before:
                        continue
                    if in_flight is not None and in_flight(self._path_of(upload["Key"])):
                        continue
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        what = f"download of {path!r} from {self.display_url}"
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        with _translated(what):
            response = await self._client.get_object(Bucket=self.bucket,
                                                     Key=self.key_for(path), **extra)
            body = response["Body"]
            expected = response.get("ContentLength")
            got = 0
            try:
                async for chunk in _body_chunks(body):
                    got += len(chunk)
                    yield chunk
            finally:
                body.close()
            if expected is not None and got != expected:
                raise RemoteError(f"{what}: the body ended after {got} of {expected} bytes")

    async def head(self, path: str) -> RemoteObject | None:
        what = f"HEAD of {path!r} in {self.display_url}"
        try:
            with _translated(what):
                head = await self._client.head_object(Bucket=self.bucket, Key=self.key_for(path),
                                                      ChecksumMode="ENABLED")
        except RemoteNotFound:
            # A HEAD answer has no body, so a missing bucket is a bare 404 too: ask the bucket.
            with _translated(what):
                try:
                    await self._client.head_bucket(Bucket=self.bucket)
                except botocore.exceptions.ClientError as exc:
                    if translate(exc, what).status == 404:
                        raise RemoteError(
                            f"{what}: NoSuchBucket: the bucket does not exist") from None
                    raise
            return None
        return RemoteObject(path, head["ContentLength"], etag=head.get("ETag", ""))

    async def delete(self, path: str) -> None:
        with _translated(f"delete of {path!r} in {self.display_url}"):
            await self._client.delete_object(Bucket=self.bucket, Key=self.key_for(path))

    async def list_objects(self, prefix: str = "") -> AsyncIterator[RemoteObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        if not prefix.startswith(self.scope):
            if not self.scope.startswith(prefix):
                return  # outside the scope: none of this remote's objects
            prefix = self.scope
        with _translated(f"listing {self.display_url}"):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield RemoteObject(item["Key"][len(base):], item["Size"],
                                       etag=item.get("ETag", ""))


def _md5_of(source: BinaryIO, size: int) -> str:
    """Hex MD5 of the first `size` bytes of `source`, read in 1 MiB blocks (a worker thread)."""
    digest = hashlib.md5(usedforsecurity=False)
    source.seek(0)
    left = size
    while left > 0 and (block := source.read(min(CHUNK_SIZE, left))):
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


def _hash_range(fd: int, offset: int, length: int, *digests: Any) -> None:
    """Feed `length` bytes of `fd` from `offset` to each of `digests`: one thread call, 1 MiB
    reads."""
    done = 0
    while done < length:
        block = os.pread(fd, min(CHUNK_SIZE, length - done), offset + done)
        if not block:
            raise RemoteError("the local file is shorter than its recorded size; "
                              "run filestore verify")
        for digest in digests:
            digest.update(block)
        done += len(block)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first real failure inside a (possibly nested) task-group error."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


class FileWindow(io.RawIOBase):
    """`length` bytes of an open file from `offset`, as a seekable file of their own: one
    multipart part streamed from disk (botocore seeks it to retry, aiohttp reads it)."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd, self._offset, self._length, self._pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + pos, 0), self._length)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        want = remaining if size is None or size < 0 else min(size, remaining)
        data = os.pread(self._fd, want, self._offset + self._pos) if want else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _without_userinfo(url: str) -> str:
    """`url` fit to show: credentials written into it (`http://user:pass@host`) left out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
