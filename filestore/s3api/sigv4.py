"""Who signed an S3 request, and whether the signature holds.

`parse()` reads the credentials a request carries (SigV4 in the `Authorization` header or a
presigned query, SigV2 in a presigned query or the header), checks their form, scope and time,
and returns an `Auth` naming the access key; the caller looks the secret up and `verify()`
recomputes the signature. Both are pure: no I/O, the clock is an argument.

What is signed is what the client computed, so the request is read as sent (the ASGI scope's
`raw_path` and `query_string` as latin-1, the headers with their duplicates). S3 neither
normalises nor double-encodes the path, as botocore and the Go and Java SDKs sign it; a client
that encodes a character they leave alone (or the reverse) is still understood: the path is also
tried re-encoded with the RFC 3986 rules, segment by segment (a `%2F` stays in its segment).

The body is read as the signed payload hash says (`Verified.payload`); an aws-chunked one
(`streaming-*`) also needs the headers `chunked_headers()` names, and its `Content-Encoding:
aws-chunked`, when present, is not the object's encoding (strip it before storing the rest).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from .whole import whole_number

PayloadMode = Literal["unsigned", "sha256", "streaming-signed", "streaming-unsigned-trailer",
                      "streaming-signed-trailer"]
AuthKind = Literal["v4-header", "v4-query", "v2-header", "v2-query"]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60  # seconds either way, as S3 allows a signed request's time
MAX_EXPIRES = 7 * 24 * 3600  # a SigV4 presigned URL lives a week at most
_PAYLOADS: dict[str, PayloadMode] = {
    "UNSIGNED-PAYLOAD": "unsigned", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": "streaming-signed",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER": "streaming-unsigned-trailer",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": "streaming-signed-trailer",
}
# The query parameters SigV2 signs (botocore's HmacV1Auth.QSAOfInterest: subresources and the
# response-* overrides); any other parameter is not part of the string to sign.
_V2_SUBRESOURCES = frozenset([
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
    "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
    "uploads", "uploadId", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass",
    "notification", "replication", "analytics", "metrics", "inventory", "select",
    "select-type", "object-lock"])
_V4_QUERY = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
             "X-Amz-SignedHeaders", "X-Amz-Signature")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


class S3AuthError(Exception):
    """Credentials S3 would refuse: `code` and `status` are S3's; the message holds no secret.

    `region` is set when the credential named another region (S3 answers it in `<Region>`);
    `details` are the elements S3 adds to its error (for `SignatureDoesNotMatch`, the string to
    sign and canonical request computed here: neither holds a secret)."""

    def __init__(self, code: str, message: str, status: int, *, region: str | None = None,
                 details: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.region = region
        self.details = details or {}


@dataclass(frozen=True)
class Auth:
    """A request's credentials as `parse()` read them, and what `verify()` checks them against."""

    kind: AuthKind
    access_key_id: str
    signature: str  # lowercase hex (SigV4), base64 as sent (SigV2)
    payload_hash: str  # what the signature says of the body: x-amz-content-sha256's value
    amz_date: str = ""  # the request's time, YYYYMMDDTHHMMSSZ (SigV4)
    scope: str = ""  # "20260101/us-east-1/s3/aws4_request" (SigV4)
    expires: float | None = None  # when a presigned URL stops working (Unix time)
    security_token: str | None = field(default=None, repr=False)  # an STS session's, if any
    # What the client may have signed (SigV4: canonical requests; SigV2: strings to sign)
    signed_texts: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ChunkSigning:
    """What each chunk of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD*` body is checked with."""

    signing_key: bytes = field(repr=False)  # derived from the secret: never shown
    scope: str  # "20260101/us-east-1/s3/aws4_request"
    amz_date: str  # YYYYMMDDTHHMMSSZ, as in the request's string to sign
    seed_signature: str  # the request's signature (lowercase hex): the chain's first link


@dataclass(frozen=True)
class Verified:
    """A request whose signature held, and how its body must be read."""

    access_key_id: str
    payload: PayloadMode
    payload_sha256: str | None = None  # "sha256": the lowercase hex the body must hash to
    chunk_signing: ChunkSigning | None = None  # "streaming-signed", "streaming-signed-trailer"


def chunked_headers(payload: PayloadMode) -> tuple[str, ...]:
    """The headers an aws-chunked body of this payload mode needs: `x-amz-trailer` names the
    trailer's checksum; `x-amz-decoded-content-length` (the decoded length) comes with chunk
    signatures, and botocore leaves it out of unsigned-trailer uploads of unknown length."""
    return {"streaming-signed": ("x-amz-decoded-content-length",),
            "streaming-signed-trailer": ("x-amz-decoded-content-length", "x-amz-trailer"),
            "streaming-unsigned-trailer": ("x-amz-trailer",)}.get(payload, ())


def parse(method: str, raw_path: str, raw_query: str, headers: Sequence[tuple[str, str]],
          region: str, now: float) -> Auth | None:
    """The credentials of a request, checked but for the signature; None when it has none."""
    hmap: dict[str, list[str]] = {}
    for name, value in headers:
        hmap.setdefault(name.strip().lower(), []).append(value)
    query = _query_pairs(raw_query)
    names = {key for key, _ in query}
    authorization = hmap.get("authorization")
    v4_query = any(name in names for name in _V4_QUERY)
    v2_query = "AWSAccessKeyId" in names or "Signature" in names
    if authorization is not None and (v4_query or v2_query):
        raise S3AuthError("InvalidArgument", "Only one auth mechanism allowed; only the "
                          "X-Amz-Algorithm query parameter, Signature query string parameter "
                          "or the Authorization header should be specified", 400)
    request = _Request(method.upper(), raw_path or "/", query, hmap)
    if authorization is not None:
        if len(authorization) > 1:
            raise _malformed("more than one Authorization header")
        scheme, _, rest = authorization[0].strip().partition(" ")
        if scheme == ALGORITHM:
            return _parse_v4_header(request, rest, region, now)
        if scheme == "AWS":
            return _parse_v2_header(request, rest.strip(), now)
        raise S3AuthError("InvalidArgument", "Unsupported Authorization Type", 400)
    if v4_query:
        return _parse_v4_query(request, region, now)
    if v2_query:
        return _parse_v2_query(request, now)
    return None


def verify(auth: Auth, secret_access_key: str) -> Verified:
    """The signature recomputed with the secret: `SignatureDoesNotMatch` unless it holds."""
    held = False
    if auth.kind.startswith("v2"):
        try:
            provided = base64.b64decode(auth.signature, validate=True)
        except (binascii.Error, ValueError):  # not base64: matches nothing
            provided = b""
        for text in auth.signed_texts:
            mac = hmac.new(secret_access_key.encode(), _utf8(text), hashlib.sha1).digest()
            held |= hmac.compare_digest(mac, provided)
        if not held:
            raise _mismatch(auth, auth.signed_texts[0], None)
        return Verified(auth.access_key_id, "unsigned")
    date, scope_region, service, _ = auth.scope.split("/")
    key = signing_key(secret_access_key, date, scope_region, service)
    for canonical in auth.signed_texts:
        expected = hmac.new(key, _utf8(_string_to_sign(auth, canonical)), hashlib.sha256)
        held |= hmac.compare_digest(expected.hexdigest(), auth.signature)
    if not held:
        first = auth.signed_texts[0]
        raise _mismatch(auth, _string_to_sign(auth, first), first)
    mode = _PAYLOADS.get(auth.payload_hash, "sha256")
    chunk_signing = None
    if mode in ("streaming-signed", "streaming-signed-trailer"):
        chunk_signing = ChunkSigning(key, auth.scope, auth.amz_date, auth.signature)
    return Verified(auth.access_key_id, mode,
                    auth.payload_hash.lower() if mode == "sha256" else None, chunk_signing)


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The SigV4 signing key of a day, region and service: the HMAC chain from the secret
    (four HMACs; the same all day for a key, so kept for the keys in use)."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: list[tuple[str, str | None]]  # (key, value; None without "="): see _query_pairs
    headers: dict[str, list[str]]  # lower-case name -> its values in order

    def one(self, name: str) -> str | None:
        values = self.headers.get(name)
        return None if values is None else values[0].strip()

    def param(self, name: str) -> str | None:
        found = [value or "" for key, value in self.query if key == name]
        if len(found) > 1:
            raise _query_error(f"the query parameter {name} is given more than once")
        return found[0] if found else None


def _parse_v4_header(request: _Request, rest: str, region: str, now: float) -> Auth:
    items = [item.strip().partition("=") for item in rest.split(",")]
    parts = {key: value.strip() for key, sep, value in items if sep}
    if len(items) != 3 or set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise _malformed("expecting Credential=..., SignedHeaders=..., Signature=...")
    # x-amz-date wins; a Date header (RFC 1123) is signed in the x-amz-date form.
    amz_header = request.one("x-amz-date")
    when = _any_date(amz_header if amz_header is not None else request.one("date"),
                     basic_only=amz_header is not None)
    if when is None:
        raise _no_date()
    amz_date = _amz_format(when)
    key_id, scope, signed, signature = _v4_parts(
        parts["Credential"], parts["SignedHeaders"], parts["Signature"], amz_date, region,
        query=False)
    _check_skew(when, now)
    payload = request.one("x-amz-content-sha256")
    if payload is None:
        raise S3AuthError("InvalidRequest", "Missing required header for this request: "
                          "x-amz-content-sha256", 400)
    if payload not in _PAYLOADS and not _HEX64.fullmatch(payload):
        raise S3AuthError("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                          "a STREAMING-* value or a valid sha256 value.", 400)
    _all_signed(request, signed)
    texts = tuple(_canonical_request(request, path, signed, payload, drop=None)
                  for path in _path_forms(request.path))
    return Auth("v4-header", key_id, signature, payload, amz_date, scope, None,
                request.one("x-amz-security-token"), texts)


def _parse_v4_query(request: _Request, region: str, now: float) -> Auth:
    given = {name: value for name in _V4_QUERY if (value := request.param(name)) is not None}
    if len(given) != len(_V4_QUERY):
        raise _query_error("Query-string authentication version 4 requires the "
                           "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, "
                           "X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
    if given["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_error(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    amz_date, raw_expires = given["X-Amz-Date"], given["X-Amz-Expires"]
    when = _any_date(amz_date, basic_only=True)
    if when is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format "
                           "\"yyyyMMdd'T'HHmmss'Z'\"")
    if (seconds := whole_number(raw_expires, 12)) is None:
        raise _query_error("X-Amz-Expires should be a number")
    # Too long a life is a malformed URL to S3 (400), not a refused one.
    if seconds > MAX_EXPIRES:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds); that is, the "
                           f"given X-Amz-Expires must be less than {MAX_EXPIRES} seconds")
    key_id, scope, signed, signature = _v4_parts(
        given["X-Amz-Credential"], given["X-Amz-SignedHeaders"], given["X-Amz-Signature"],
        amz_date, region, query=True)
    expires = when + seconds
    if now > expires:
        raise S3AuthError("AccessDenied", "Request has expired", 403, details={
            "X-Amz-Expires": raw_expires, "Expires": _amz_format(expires),
            "ServerTime": _amz_format(now)})
    if when - now > MAX_SKEW:
        raise S3AuthError("AccessDenied", "Request is not valid yet", 403)
    # botocore signs an x-amz-content-sha256 header when the request has one, a few clients
    # put it in the query; otherwise a presigned URL does not sign its payload.
    payload = (request.param("X-Amz-Content-Sha256") or request.one("x-amz-content-sha256")
               or "UNSIGNED-PAYLOAD")
    if payload not in ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER") \
            and not _HEX64.fullmatch(payload):
        raise S3AuthError("InvalidRequest", "a presigned URL's payload is UNSIGNED-PAYLOAD, "
                          "STREAMING-UNSIGNED-PAYLOAD-TRAILER or a SHA-256", 400)
    _all_signed(request, signed)
    texts = tuple(_canonical_request(request, path, signed, payload, drop="X-Amz-Signature")
                  for path in _path_forms(request.path))
    return Auth("v4-query", key_id, signature, payload, amz_date, scope, expires,
                request.param("X-Amz-Security-Token"), texts)


def _parse_v2_query(request: _Request, now: float) -> Auth:
    key_id, signature = request.param("AWSAccessKeyId"), request.param("Signature")
    expires = request.param("Expires")
    if not key_id or not signature or expires is None:
        raise S3AuthError("AccessDenied", "Query-string authentication requires the Signature, "
                          "Expires and AWSAccessKeyId parameters", 403)
    if (until := whole_number(expires, 12)) is None:
        raise _query_error("Expires must be a number of seconds since the epoch")
    if now > until:
        raise S3AuthError("AccessDenied", "Request has expired", 403, details={
            "Expires": _amz_format(until), "ServerTime": _amz_format(now)})
    return Auth("v2-query", key_id, signature, "UNSIGNED-PAYLOAD", expires=until,
                security_token=request.param("x-amz-security-token"),
                signed_texts=_v2_strings(request, expires, from_query=True))


def _parse_v2_header(request: _Request, rest: str, now: float) -> Auth:
    key_id, sep, signature = rest.rpartition(":")
    if not (sep and key_id and signature):
        raise _malformed("expecting AWS AccessKeyId:Signature")
    amz_date, date = request.one("x-amz-date"), request.one("date")
    when = _any_date(amz_date if amz_date is not None else date)
    if when is None:
        raise _no_date()
    _check_skew(when, now)
    # S3's rule: with an x-amz-date the Date line is empty (x-amz-date is signed among the
    # x-amz-* headers); botocore's HmacV1Auth signs the Date header as it is: both are tried.
    lines = ("", date or "") if amz_date is not None else (date or "",)
    texts = tuple(text for line in dict.fromkeys(lines)
                  for text in _v2_strings(request, line, from_query=False))
    return Auth("v2-header", key_id, signature, "UNSIGNED-PAYLOAD",
                security_token=request.one("x-amz-security-token"), signed_texts=texts)


def _v4_parts(credential: str, signed_headers: str, signature: str, amz_date: str,
              region: str, *, query: bool) -> tuple[str, str, list[str], str]:
    """(access key id, scope, signed header names, signature), checked: the credential is
    `AKID/20260101/us-east-1/s3/aws4_request`, of the request's day and this region."""
    parts = credential.rsplit("/", 4)
    names = signed_headers.split(";")
    if len(parts) != 5 or not parts[0] or not re.fullmatch(r"\d{8}", parts[1]):
        problem = ('the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/'
                   'SERVICE/aws4_request".')
    elif parts[4] != "aws4_request":
        problem = f'incorrect terminal "{parts[4]}". This endpoint uses "aws4_request".'
    elif parts[3] != "s3":
        problem = f"the service '{parts[3]}' is wrong; expecting 's3'"
    elif parts[2] != region:
        error = _bad(query, "X-Amz-Credential",
                     f"the region '{parts[2]}' is wrong; expecting '{region}'")
        error.region = region
        raise error
    elif parts[1] != amz_date[:8]:
        problem = "Invalid credential date. Date is not the same as X-Amz-Date."
    elif not all(_HEADER_NAME.fullmatch(name) for name in names):
        raise _bad(query, "X-Amz-SignedHeaders",
                   "SignedHeaders must be lower-case header names separated by ';'")
    elif not _HEX64.fullmatch(signature):
        raise _bad(query, "X-Amz-Signature", "the Signature must be 64 hexadecimal digits")
    else:
        return parts[0], "/".join(parts[1:]), names, signature.lower()
    raise _bad(query, "X-Amz-Credential", problem)


def _all_signed(request: _Request, signed: list[str]) -> None:
    """S3 refuses x-amz-* headers (and a Host) the signature leaves out: they change what the
    request does. x-amz-content-sha256 is in the canonical request in any case."""
    unsigned = sorted(name for name in request.headers if name not in signed and (
        name == "host" or name.startswith("x-amz-")) and name != "x-amz-content-sha256")
    if unsigned:
        raise S3AuthError("AccessDenied", "There were headers present in the request which "
                          "were not signed", 403, details={"HeadersNotSigned": ", ".join(unsigned)})


def _canonical_request(request: _Request, path: str, signed: list[str], payload: str,
                       drop: str | None) -> str:
    pairs = sorted((_encode(key), _encode(value or "")) for key, value in request.query
                   if key != drop)
    query = "&".join(f"{key}={value}" for key, value in pairs)
    # Each value trimmed and its inner runs of white space collapsed, duplicates joined by
    # commas, as botocore and the SDKs do; a signed header that is absent is empty (and the
    # signature will not hold).
    headers = "".join(
        f"{name}:{','.join(' '.join(value.split()) for value in request.headers.get(name, []))}\n"
        for name in signed)
    return "\n".join((request.method, path, query, headers, ";".join(signed), payload))


def _string_to_sign(auth: Auth, canonical_request: str) -> str:
    return "\n".join((ALGORITHM, auth.amz_date, auth.scope,
                      hashlib.sha256(_utf8(canonical_request)).hexdigest()))


def _v2_strings(request: _Request, date_line: str, *, from_query: bool) -> tuple[str, ...]:
    """SigV2's strings to sign: the method, Content-MD5, Content-Type, the date (a presigned
    URL's Expires), the x-amz-* headers, and the resource with its subresources."""
    def standard(name: str) -> str:
        value = request.one(name)
        if value is None and from_query:  # botocore moves them into a presigned URL's query
            value = request.param(name)
        return value or ""

    amz: dict[str, str] = {}
    if from_query:  # ... and the x-amz-* headers too
        amz.update((key.lower(), (value or "").strip()) for key, value in request.query
                   if key.lower().startswith("x-amz-"))
    amz.update((name, ",".join(value.strip() for value in values))
               for name, values in request.headers.items() if name.startswith("x-amz-"))
    amz_lines = "".join(f"{name}:{amz[name]}\n" for name in sorted(amz))
    # Sorted by name alone, values decoded, a bare `?uploads` left bare: as botocore signs.
    sub = sorted(((key, value) for key, value in request.query if key in _V2_SUBRESOURCES),
                 key=lambda pair: pair[0])
    resource = "&".join(key if value is None else f"{key}={value}" for key, value in sub)
    head = f"{request.method}\n{standard('content-md5')}\n{standard('content-type')}\n"
    return tuple(f"{head}{date_line}\n{amz_lines}{path}" + (f"?{resource}" if resource else "")
                 for path in _path_forms(request.path))


def _query_pairs(raw_query: str) -> list[tuple[str, str | None]]:
    """The query's (key, value) pairs, percent-decoded (`+` stays: S3 clients send `%20`), None
    for a key without `=`; invalid UTF-8 survives as surrogates, re-encoded as it came."""
    pairs: list[tuple[str, str | None]] = []
    for piece in raw_query.split("&"):
        if piece:
            key, sep, value = piece.partition("=")
            pairs.append((_decode(key), _decode(value) if sep else None))
    return pairs


def _path_forms(raw_path: str) -> tuple[str, ...]:
    """The path as sent, and re-encoded segment by segment when that differs."""
    recoded = "/".join(_encode(_decode(segment)) for segment in raw_path.split("/"))
    return (raw_path,) if recoded == raw_path else (raw_path, recoded)


def _decode(text: str) -> str:
    try:
        raw = text.encode("latin-1")  # the wire's bytes, as ASGI servers decode them
    except UnicodeEncodeError:
        raw = text.encode("utf-8")
    return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


def _encode(text: str) -> str:
    """RFC 3986 percent-encoding (unreserved characters alone stay), as SigV4 uses it."""
    return quote(_utf8(text), safe="-_.~")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _amz_format(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def _any_date(value: str | None, *, basic_only: bool = False) -> float | None:
    """A date's Unix time: ISO 8601 basic (20260101T000000Z), or RFC 1123 unless basic_only."""
    try:
        if value is None or (basic_only and not _AMZ_DATE.fullmatch(value)):
            return None
        if _AMZ_DATE.fullmatch(value):
            return float(calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000", as botocore's formatdate() writes it: UTC too
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _check_skew(when: float, now: float) -> None:
    if abs(when - now) > MAX_SKEW:
        raise S3AuthError("RequestTimeTooSkewed", "The difference between the request time "
                          "and the current time is too large.", 403, details={
                              "RequestTime": _amz_format(when), "ServerTime": _amz_format(now),
                              "MaxAllowedSkewMilliseconds": str(MAX_SKEW * 1000)})


def _no_date() -> S3AuthError:
    return S3AuthError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date "
                       "header", 403)


def _malformed(detail: str) -> S3AuthError:
    return S3AuthError("AuthorizationHeaderMalformed",
                       f"The authorization header is malformed; {detail}", 400)


def _query_error(message: str) -> S3AuthError:
    return S3AuthError("AuthorizationQueryParametersError", message, 400)


def _bad(query: bool, parameter: str, detail: str) -> S3AuthError:
    if query:
        return _query_error(f"Error parsing the {parameter} parameter; {detail}")
    return _malformed(detail)


def _mismatch(auth: Auth, string_to_sign: str, canonical_request: str | None) -> S3AuthError:
    details = {"AWSAccessKeyId": auth.access_key_id, "StringToSign": string_to_sign,
               "SignatureProvided": auth.signature}
    if canonical_request is not None:
        details["CanonicalRequest"] = canonical_request
    return S3AuthError("SignatureDoesNotMatch", "The request signature we calculated does not "
                       "match the signature you provided. Check your key and signing method.",
                       403, details=details)
