"""The S3 endpoint's ASGI app: authenticate, route by path style, answer in S3's dialect.

`filestore serve` answers it on `s3.port` (serving.py binds the socket; `app.FastReads` sends
every request that arrives there here), in the same worker processes and over the same service
as `/files/`. Paths are path-style: `/` (ListBuckets), `/BUCKET` (the bucket's operations),
`/BUCKET/KEY` (the object's). Every request must be signed by a key of the administrator or of
an active account (`keys.py`); an anonymous one is 403 `AccessDenied`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any
from urllib.parse import unquote

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .. import metrics
from ..errors import FilestoreError
from ..service import Service, service_of
from . import buckets, listing, multipart, objects
from .auth import Signed, authenticate, body_of
from .buckets import Caller
from .errors import S3Error, response, translated
from .whole import count
from .xml import MAX_BODY, element, group, s3_document, timestamp

log = logging.getLogger("filestore.s3")

# Bucket subresources this endpoint does not keep: an S3 client asking gets 501, not a wrong
# answer (versioning is answered: never enabled).
_UNSUPPORTED = frozenset(("acl", "policy", "lifecycle", "cors", "tagging", "encryption", "website",
                "replication", "object-lock", "notification", "logging", "requestPayment",
                "accelerate", "analytics", "inventory", "metrics", "ownershipControls",
                "publicAccessBlock", "intelligent-tiering", "attributes", "restore", "select",
                "legal-hold", "retention", "torrent"))


class S3App:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        scope[metrics.ROUTE] = "s3"  # its paths are buckets': counted as one route of its own
        body = _Body(receive)
        request = Request(scope, body.receive)
        request_id = uuid.uuid4().hex[:16].upper()
        answer: Any
        try:
            answer = await _handle(request)
        except S3Error as exc:
            answer = response(exc, scope.get("path", ""), request_id,
                              head=request.method == "HEAD")
        except FilestoreError as exc:
            answer = response(translated(exc), scope.get("path", ""), request_id,
                              head=request.method == "HEAD")
        except ClientDisconnect:
            return
        except Exception:
            log.exception("s3: %s %s failed", request.method, scope.get("path", ""))
            answer = response(S3Error("InternalError", "We encountered an internal error. "
                                      "Please try again.", 500), scope.get("path", ""),
                              request_id, head=request.method == "HEAD")
        if isinstance(answer, Response):
            answer.headers.setdefault("x-amz-request-id", request_id)
            if not body.read_all and _has_body(scope):
                # Answered before the body was read (a refusal): the rest of it is still on
                # the connection, where it would be taken for the next request.
                answer.headers["connection"] = "close"
        await answer(scope, body.receive, send)


class _Body:
    """The request's `receive`, noting whether the body was read to its end."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.read_all = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.read_all = True
        return message


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _handle(request: Request) -> Any:
    service = service_of(request.app.state)
    signed = authenticate(request, service)
    bucket, key = _bucket_and_key(request, service.settings.s3.domain)
    params = request.query_params
    asked = _UNSUPPORTED.intersection(params.keys()) if params else None
    if asked:
        raise S3Error("NotImplemented", f"?{min(asked)} is not implemented by this endpoint",
                      501)
    if not bucket:
        if request.method != "GET":
            raise _not_allowed(request.method)
        return _xml(_list_buckets(service, signed.caller))
    if not key:
        return await _bucket(request, service, signed, bucket)
    return await _object(request, service, signed, bucket, key)


def _bucket_and_key(request: Request, domain: str) -> tuple[str, str]:
    """Path-style (`/BUCKET/KEY`), or virtual-hosted (`Host: BUCKET.DOMAIN`, path `/KEY`) when
    `s3.domain` is set and the host names a bucket under it."""
    path = request.url.path.lstrip("/")
    if domain:
        host = request.headers.get("host", "").rsplit(":", 1)[0].lower().rstrip(".")
        if host.endswith("." + domain):
            return host[:-len(domain) - 1], path
    bucket, _, key = path.partition("/")
    return bucket, key


# -- the service and buckets -------------------------------------------------------------------


def _list_buckets(service: Service, caller: Caller) -> bytes:
    owner = caller.account or "filestore"
    return s3_document("ListAllMyBucketsResult", [
        group("Owner", [element("ID", owner), element("DisplayName", owner)]),
        group("Buckets", [group("Bucket", [element("Name", name),
                                           element("CreationDate", timestamp(created))])
                          for name, created in buckets.listing(service, caller)])])


async def _bucket(request: Request, service: Service, signed: Signed, bucket: str) -> Any:
    caller, params, method = signed.caller, request.query_params, request.method
    if method == "PUT":
        await _drain(request)
        buckets.create(service, caller, bucket)
        return Response(status_code=200, headers={"location": f"/{bucket}"})
    if method == "DELETE":
        buckets.delete(service, caller, bucket)
        return Response(status_code=204)
    reader = service.store.registry.read
    prefix = buckets.require(reader, caller, bucket)
    if method == "HEAD":
        return Response(status_code=200, headers={"x-amz-bucket-region":
                                                  service.settings.s3.region})
    if method == "POST" and "delete" in params:
        body = await _small_body(request, signed)
        return _xml(await objects.delete_many(service, prefix, body))
    if method != "GET":
        raise _not_allowed(method)
    if "uploads" in params:
        return _xml(multipart.list_uploads(
            service, caller, bucket, params.get("prefix", ""),
            (params.get("key-marker", ""), params.get("upload-id-marker", "")),
            count(params.get("max-uploads"), "max-uploads", 1000)))
    if "location" in params:
        region = service.settings.s3.region
        return _xml(s3_document("LocationConstraint", [region if region != "us-east-1"
                                                       else ""]))
    if "versioning" in params:
        return _xml(s3_document("VersioningConfiguration", []))
    if params.get("list-type") == "2":
        return _xml(listing.list_v2(reader, bucket, prefix, params))
    return _xml(listing.list_v1(reader, bucket, prefix, params))


# -- objects -------------------------------------------------------------------------------------


async def _object(request: Request, service: Service, signed: Signed, bucket: str,
                  key: str) -> Any:
    method, params, caller = request.method, request.query_params, signed.caller
    prefix = buckets.require(service.store.registry.read, caller, bucket)
    path = objects.path_of(prefix, key)
    upload_id = params.get("uploadId")
    if upload_id is not None:
        return await _multipart(request, service, signed, bucket, key, upload_id)
    if method == "POST" and "uploads" in params:
        await _drain(request)
        return _xml(multipart.create(service, caller, bucket, key, path,
                                     request.headers.get("content-type"),
                                     objects.user_meta(request)))
    if "partNumber" in params:
        raise S3Error("NotImplemented", "reading one part of an object is not implemented",
                      501)
    if method in ("GET", "HEAD"):
        return await objects.get(request, service, path, key)
    if method == "PUT":
        if "x-amz-copy-source" in request.headers:
            return await _copy(request, service, signed, path)
        body, length, sha256 = body_of(request, signed)
        return await objects.put(service, path, body, content_type=request.headers.get(
            "content-type"), content_length=length, expect_sha256=sha256,
            expect_md5=objects.content_md5(request), meta=objects.user_meta(request))
    if method == "DELETE":
        return await objects.delete(service, path)
    raise _not_allowed(method)


async def _multipart(request: Request, service: Service, signed: Signed, bucket: str,
                     key: str, upload_id: str) -> Any:
    """UploadPart (PUT), CompleteMultipartUpload (POST), AbortMultipartUpload (DELETE) and
    ListParts (GET) of one upload."""
    method, params, caller = request.method, request.query_params, signed.caller
    if method == "PUT":
        number = multipart.part_number(params.get("partNumber"))
        if "x-amz-copy-source" in request.headers:
            return await _copy_part(request, service, signed, bucket, key, upload_id, number)
        body, length, sha256 = body_of(request, signed)
        return await multipart.upload_part(service, caller, bucket, key, upload_id, number,
                                           body, length, sha256, objects.content_md5(request))
    if method == "POST":
        return _xml(await multipart.complete(service, caller, bucket, key, upload_id,
                                             await _small_body(request, signed)))
    if method == "DELETE":
        await anyio.to_thread.run_sync(multipart.abort, service, caller, bucket, key, upload_id)
        return Response(status_code=204)
    if method == "GET":
        after = params.get("part-number-marker", "0")
        return _xml(multipart.list_parts(
            service, caller, bucket, key, upload_id,
            count(after, "part-number-marker", multipart.MAX_PARTS, low=0),
            count(params.get("max-parts"), "max-parts", 1000)))
    raise _not_allowed(method)


def _copy_source(request: Request, service: Service, signed: Signed) -> tuple[str, str]:
    """(path, key) of `x-amz-copy-source: /BUCKET/KEY` (URL-encoded), a bucket of the
    caller's."""
    source = unquote(request.headers["x-amz-copy-source"]).split("?versionId=", 1)[0]
    source_bucket, _, source_key = source.lstrip("/").partition("/")
    if not source_bucket or not source_key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be /bucket/key", 400)
    prefix = buckets.require(service.store.registry.read, signed.caller, source_bucket)
    return objects.path_of(prefix, source_key), source_key


_RANGE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{1,18})")


async def _copy_part(request: Request, service: Service, signed: Signed, bucket: str,
                     key: str, upload_id: str, number: int) -> Response:
    """UploadPartCopy: a part made of (a range of) another object's bytes, within filestore."""
    await _drain(request)
    source_path, source_key = _copy_source(request, service, signed)
    first, last = 0, None
    raw = request.headers.get("x-amz-copy-source-range")
    if raw is not None:
        match = _RANGE.fullmatch(raw.strip())
        if match is None:
            raise S3Error("InvalidArgument", "x-amz-copy-source-range must be bytes=FIRST-LAST",
                          400)
        first, last = int(match.group(1)), int(match.group(2))
    async with objects.source_bytes(service, source_path, source_key, first, last) as (
            record, body):
        size = record.size - first if last is None else last - first + 1
        answer = await multipart.upload_part(service, signed.caller, bucket, key, upload_id,
                                             number, body, size, None, None)
    return _xml(s3_document("CopyPartResult", [
        element("LastModified", timestamp(record.modified)),
        element("ETag", answer.headers["etag"])]))


async def _copy(request: Request, service: Service, signed: Signed, path: str) -> Response:
    """CopyObject: `x-amz-copy-source: /BUCKET/KEY` (URL-encoded), a bucket of the caller's."""
    await _drain(request)
    source_path, source_key = _copy_source(request, service, signed)
    directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "x-amz-metadata-directive is COPY or REPLACE", 400)
    replace = directive == "REPLACE"
    return _xml(await objects.copy(
        service, source_path, source_key, path,
        content_type=request.headers.get("content-type") if replace else None,
        meta=objects.user_meta(request) if replace else None))


# -- helpers ------------------------------------------------------------------------------------


def _xml(body: bytes) -> Response:
    return Response(body, media_type="application/xml")


def _not_allowed(method: str) -> S3Error:
    return S3Error("MethodNotAllowed", f"The specified method is not allowed against this "
                   f"resource: {method}", 405)


async def _small_body(request: Request, signed: Signed) -> bytes:
    """A request's XML body, whole (at most 1 MiB), checked as every body is (`auth.body_of`:
    the signed SHA-256, aws-chunked signatures and checksums, Content-MD5)."""
    stream, _, sha256 = body_of(request, signed)
    body = b""
    async for chunk in stream:
        body += chunk
        if len(body) > MAX_BODY:
            raise S3Error("MalformedXML", "the XML body is too large", 400)
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header "
                      "does not match what was computed.", 400)
    md5 = objects.content_md5(request)
    if md5 is not None and hashlib.md5(body).hexdigest() != md5:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                      "received.", 400)
    return body


async def _drain(request: Request) -> None:
    """Read and drop a body nothing here uses (CreateBucket's location constraint), so the
    connection stays usable."""
    async for _ in request.stream():
        pass
