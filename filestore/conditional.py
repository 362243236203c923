"""Conditional requests (RFC 9110 section 13): validators, preconditions and If-Range.

Preconditions are evaluated in the RFC's order (13.2.2): If-Match, else If-Unmodified-Since;
then If-None-Match, else If-Modified-Since (GET/HEAD only). A header with an unparseable value is
ignored, as the RFC asks for dates and as is safest for entity-tag lists.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from email.utils import formatdate, mktime_tz, parsedate_tz

from .errors import PreconditionFailed
from .registry.files import FileRecord

_ETAG_RE = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


@dataclasses.dataclass(frozen=True)
class Validators:
    etag: str  # strong, quoted: `file_etag`
    last_modified: int  # whole seconds since the epoch

    @property
    def http_date(self) -> str:
        return _http_date(self.last_modified)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def file_etag(record: FileRecord) -> str:
    """A version's strong ETag: its SHA-256, or nginx's own for a static file (mtime and size in
    hex, the mtime its Last-Modified) for a version given one (migration 14: no two versions of
    a path share it), so that nginx and filestore answer its hits alike (static.py)."""
    if record.plain_etag:
        return f'"{int(record.modified):x}-{record.size:x}"'
    return f'"{record.sha256}"'


def _parse_date(value: str) -> int | None:
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return int(mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _etags(value: str) -> list[tuple[bool, str]] | None:
    """`[(weak, '"tag"'), ...]` from an If-Match / If-None-Match list; None if malformed."""
    tags, pos = [], 0
    value = value.strip()
    while pos < len(value):
        match = _ETAG_RE.match(value, pos)
        if match is None or match.end() == pos:
            return None
        tags.append((bool(match.group(1)), match.group(2)))
        pos = match.end()
    return tags


def _matches(header: str, current: Validators | None, *, weak: bool) -> bool | None:
    """Whether `header` (an entity-tag list or `*`) matches; None when it is malformed."""
    if header.strip() == "*":
        return current is not None
    tags = _etags(header)
    if tags is None:
        return None
    if current is None:
        return False
    # Our ETags are always strong, so strong comparison only rules out W/ tags.
    return any(tag == current.etag and (weak or not is_weak) for is_weak, tag in tags)


def check_preconditions(
    method: str, headers: Mapping[str, str], current: Validators | None
) -> int | None:
    """None to go on, 304 (Not Modified) to answer GET/HEAD with, or raise 412.

    `current` is None when the target does not exist yet (a PUT that creates it).
    """
    safe = method in ("GET", "HEAD")
    if_match = headers.get("if-match")
    if if_match is not None:
        # Unlike If-None-Match, a malformed If-Match fails: ignoring it would turn a
        # conditional write into an unconditional one.
        if _matches(if_match, current, weak=False) is not True:
            raise PreconditionFailed("If-Match does not match the current ETag")
    elif current is not None and "if-unmodified-since" in headers:
        since = _parse_date(headers["if-unmodified-since"])
        if since is not None and current.last_modified > since:
            raise PreconditionFailed("the file was modified after If-Unmodified-Since")

    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, current, weak=True):
            if safe:
                return 304
            raise PreconditionFailed("If-None-Match matches: the file exists")
    elif safe and current is not None and "if-modified-since" in headers:
        since = _parse_date(headers["if-modified-since"])
        if since is not None and current.last_modified <= since:
            return 304
    return None


def if_range_allows(headers: Mapping[str, str], current: Validators) -> bool:
    """True when a Range may be honoured: no If-Range, or it names the current version."""
    value = headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return value == current.etag  # strong comparison; a weak tag never matches
    date = _parse_date(value)
    return date is not None and date == current.last_modified
