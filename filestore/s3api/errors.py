"""S3's errors: an XML document with a code S3 clients know, and its status.

Everything the endpoint refuses is an `S3Error`; filestore's own domain errors (a bad path, a
quota, a full disk, a missing file) are translated here, once, so a client of the S3 endpoint
never sees filestore's JSON errors, and never a 500 for what it sent.
"""

from __future__ import annotations

from starlette.responses import Response

from ..errors import (
    BadPath,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    FilestoreError,
    Forbidden,
    InsufficientStorage,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    RegistryUnavailable,
    RemoteError,
    TooLarge,
    Unauthorized,
)
from .xml import document, element


class S3Error(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", f"The specified bucket does not exist: {bucket}", 404)


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", f"The specified key does not exist: {key}", 404)


# filestore's domain errors, most specific first (the first match wins: a subclass listed after
# its base would never be reached).
_TRANSLATIONS: list[tuple[type[FilestoreError], str, int]] = [
    (BadPath, "InvalidArgument", 400),
    (ChecksumMismatch, "BadDigest", 400),
    (QuotaExceeded, "QuotaExceeded", 403),
    (TooLarge, "EntityTooLarge", 400),
    (PreconditionFailed, "PreconditionFailed", 412),
    (NotFound, "NoSuchKey", 404),
    (InsufficientStorage, "InsufficientStorage", 507),
    (Unauthorized, "AccessDenied", 403),
    (Forbidden, "AccessDenied", 403),
    (Conflict, "OperationAborted", 409),
    (BadRequest, "InvalidRequest", 400),
    (RemoteError, "ServiceUnavailable", 503),
    # The registry's server away: S3's own answer when it cannot serve now, which every S3
    # client retries with backoff (never an InternalError 500).
    (RegistryUnavailable, "ServiceUnavailable", 503),
]


def translated(exc: FilestoreError) -> S3Error:
    for kind, code, status in _TRANSLATIONS:
        if isinstance(exc, kind):
            return S3Error(code, exc.detail, status)
    return S3Error("InternalError", exc.detail, 500 if exc.status >= 500 else exc.status)


def response(error: S3Error, resource: str, request_id: str, *, head: bool = False) -> Response:
    """The error as S3 answers it (a HEAD: the status and headers alone, as S3 does)."""
    headers = {"x-amz-request-id": request_id}
    if head:
        return Response(status_code=error.status, headers=headers)
    body = document("Error", None, [
        element("Code", error.code), element("Message", error.message),
        element("Resource", resource), element("RequestId", request_id)])
    return Response(body, status_code=error.status, media_type="application/xml",
                    headers=headers)
