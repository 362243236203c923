"""Who signed an S3 request, and the body it signed, checked as it streams.

Every request is signed (SigV4 in the header or the query, or a SigV2 presigned query:
`sigv4.py`) with a key pair of the administrator or of an active account (`keys.py`); the key
is looked up on every request, so a revoked key or a suspended account is refused from the next
one on. The body comes as the signature says: as it is (UNSIGNED-PAYLOAD), with a signed
SHA-256 the stored file must have, or aws-chunked (`chunked.py`: chunk signatures or a checksum
trailer, verified as it streams); an `x-amz-checksum-*` header is checked the same way. A
mismatch raises from the body's iterator, before the store records anything, so nothing of it
is kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request

from . import chunked, sigv4
from .buckets import Caller
from .errors import S3Error
from .whole import whole_number

if TYPE_CHECKING:
    from ..service import Service


@dataclasses.dataclass(frozen=True)
class Signed:
    caller: Caller
    verified: sigv4.Verified


def authenticate(request: Request, service: Service) -> Signed:
    """The caller of a signed request: 403 `AccessDenied` for an anonymous one or a suspended
    account's, `InvalidAccessKeyId` for an unknown key, `SignatureDoesNotMatch`..."""
    scope = request.scope
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    headers = [(name.decode("latin-1"), value.decode("latin-1"))
               for name, value in scope["headers"]]
    try:
        auth = sigv4.parse(request.method, raw_path, scope["query_string"].decode("latin-1"),
                           headers, service.settings.s3.region, time.time())
        if auth is None:
            raise S3Error("AccessDenied", "Anonymous access is not allowed: sign the request "
                          "with an access key", 403)
        found = service.s3_keys.lookup(auth.access_key_id)
        if found is None:
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                          "exist in our records.", 403)
        account, secret = found
        verified = sigv4.verify(auth, secret)
    except sigv4.S3AuthError as exc:
        raise S3Error(exc.code, exc.message, exc.status) from None
    if account:
        held = service.store.registry.read.accounts.get(account)
        if held is None or not held.active:
            raise S3Error("AccessDenied", f"the account {account!r} is suspended", 403)
    return Signed(Caller(account, auth.access_key_id), verified)


def body_of(request: Request, signed: Signed
            ) -> tuple[AsyncIterator[bytes], int | None, str | None]:
    """(the body's decoded bytes, their length if known, the SHA-256 the body must have)."""
    verified = signed.verified
    mode = verified.payload
    headers = request.headers
    length = _length(headers.get("content-length"))
    stream: AsyncIterator[bytes] = _raw(request)
    expect_sha256 = None
    if mode == "sha256":
        expect_sha256 = verified.payload_sha256
    elif mode.startswith("streaming"):
        decoded = _length(headers.get("x-amz-decoded-content-length"))
        stream = chunked.decode(stream, verified, headers.get("x-amz-trailer"), decoded)
        length = decoded
    checksum = chunked.header_checksum(headers)
    if checksum is not None:
        stream = _checked(stream, checksum)
    return _translated(stream), length, expect_sha256


async def _raw(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _checked(stream: AsyncIterator[bytes], checksum: chunked.ChecksumVerifier
                   ) -> AsyncIterator[bytes]:
    async for chunk in stream:
        checksum.update(chunk)
        yield chunk
    checksum.verify()


async def _translated(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body, its payload errors as S3 errors (raised before anything is recorded)."""
    try:
        async for chunk in stream:
            yield chunk
    except chunked.S3PayloadError as exc:
        raise S3Error(exc.code, exc.message, exc.status) from None


def _length(raw: str | None) -> int | None:
    length = whole_number(raw)
    if length is None and raw is not None:
        raise S3Error("InvalidArgument", "a length header is not a whole number", 400)
    return length
