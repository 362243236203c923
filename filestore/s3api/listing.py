"""ListObjectsV2 and ListObjects (v1): a bucket's keys, a page at a time, in key order.

Keys are paths under the bucket's prefix, read from the registry in path order (the index the
`/files/` listing uses), a page of at most `max-keys` (1000) at a time. With a delimiter, the
keys that share the part up to it are one common prefix, and the scan jumps past them all (one
seek, not a walk through the subtree). Continuation tokens are the last path given, encoded;
they never lead outside the bucket.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from urllib.parse import quote

from ..registry import FileRecord, Tables
from ..registry.counters import MAX_CHAR
from .errors import S3Error
from .objects import etags
from .whole import count
from .xml import element, group, s3_document, timestamp

MAX_KEYS = 1000
# Sorts after every path that starts with a given prefix: `listing(after=p + AFTER_ALL)` skips
# the whole subtree under `p` (a common prefix of a delimited listing).
AFTER_ALL = MAX_CHAR
_PAGE = 1000


@dataclasses.dataclass
class Page:
    contents: list[FileRecord]
    prefixes: list[str]
    truncated: bool
    last: str  # the key (or common prefix) the page ended on: where the next one starts


def scan(tx: Tables, base: str, prefix: str, delimiter: str, after: str, limit: int) -> Page:
    """Up to `limit` keys and common prefixes of the bucket at path prefix `base`, after the
    key `after` (""), under `prefix`."""
    page = Page([], [], False, after)
    cursor = base + after if after else ""
    start = base + prefix
    while True:
        rows = tx.files.listing(start, cursor, _PAGE)
        for record in rows:
            if len(page.contents) + len(page.prefixes) >= limit:
                page.truncated = True
                return page
            key = record.path[len(base):]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[:cut + len(delimiter)]
                if common > after:  # else the page before ended on it (a token, a marker)
                    page.prefixes.append(common)
                    page.last = common
                cursor = base + common + AFTER_ALL  # past every key under it
                break
            page.contents.append(record)
            page.last = key
            cursor = record.path
        else:
            if len(rows) < _PAGE:
                return page


def _max_keys(params: Mapping[str, str]) -> int:
    return count(params.get("max-keys"), "max-keys", MAX_KEYS, low=0)


def _token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (ValueError, UnicodeError, binascii.Error):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      400) from None


Encode = Callable[[str], str]


def _encoder(params: Mapping[str, str]) -> tuple[bool, Encode]:
    kind = params.get("encoding-type")
    if kind not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", 400)
    if kind == "url":  # keys as URL-encoded text: what XML 1.0 cannot carry comes through
        return True, lambda text: quote(text, safe="/")
    return False, lambda text: text


def _contents(tx: Tables, records: list[FileRecord], base: str, encode: Encode) -> list[str]:
    tags = etags(tx, records)
    return [group("Contents", [
        element("Key", encode(r.path[len(base):])), element("LastModified", timestamp(r.modified)),
        element("ETag", tags[r.path]), element("Size", r.size),
        element("StorageClass", "STANDARD")]) for r in records]


def _prefixes(prefixes: list[str], encode: Encode) -> list[str]:
    return [group("CommonPrefixes", [element("Prefix", encode(p))]) for p in prefixes]


def list_v2(tx: Tables, bucket: str, base: str, params: Mapping[str, str]) -> bytes:
    prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
    limit = _max_keys(params)
    token = params.get("continuation-token")
    start_after = params.get("start-after", "")
    after = _untoken(token) if token is not None else start_after
    if after and not after.startswith(prefix) and after < prefix:
        after = ""
    url, encode = _encoder(params)
    page = scan(tx, base, prefix, delimiter, after, limit) if limit else Page([], [], False, "")
    return s3_document("ListBucketResult", [
        element("Name", bucket), element("Prefix", encode(prefix)),
        element("Delimiter", encode(delimiter) if delimiter else None),
        element("MaxKeys", limit), element("EncodingType", "url" if url else None),
        element("KeyCount", len(page.contents) + len(page.prefixes)),
        element("IsTruncated", page.truncated),
        element("ContinuationToken", token),
        element("NextContinuationToken", _token(page.last) if page.truncated else None),
        element("StartAfter", encode(start_after) if start_after else None),
        *_contents(tx, page.contents, base, encode), *_prefixes(page.prefixes, encode)])


def list_v1(tx: Tables, bucket: str, base: str, params: Mapping[str, str]) -> bytes:
    prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
    limit = _max_keys(params)
    marker = params.get("marker", "")
    url, encode = _encoder(params)
    page = scan(tx, base, prefix, delimiter, marker, limit) if limit else Page([], [], False, "")
    # NextMarker only with a delimiter, as S3 gives it (without, a client takes the last key).
    next_marker = page.last if page.truncated and delimiter else None
    return s3_document("ListBucketResult", [
        element("Name", bucket), element("Prefix", encode(prefix)),
        element("Marker", encode(marker)), element("MaxKeys", limit),
        element("Delimiter", encode(delimiter) if delimiter else None),
        element("EncodingType", "url" if url else None),
        element("IsTruncated", page.truncated),
        element("NextMarker", encode(next_marker) if next_marker else None),
        *_contents(tx, page.contents, base, encode), *_prefixes(page.prefixes, encode)])
