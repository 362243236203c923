"""Handing the sending of a local file to nginx: `X-Accel-Redirect` (`server.accel_redirect`).

Behind nginx (`deploy/nginx.conf`) filestore still answers every request first: auth, the
registry lookup, the open that proves the bytes on disk are the recorded version, the
conditional and Range decisions, the statistics. Only when the answer is a local file's bytes
does it answer with an empty response that names the file, `{prefix}files/PATH` (not uploaded
yet) or `{prefix}cache/PATH` (a cache entry), and nginx sends the bytes with sendfile from an
internal location that maps those two trees of the data directory.

A redirect is answered only when nginx, configured as shipped, sends exactly what filestore
would have sent:

- nginx's own validators are off there (`etag off`, `if_modified_since off`) and filestore's
  ETag and Last-Modified are put back with `add_header`, as is the sandboxing
  Content-Security-Policy (nginx keeps Content-Type, Content-Disposition and Cache-Control by
  itself; `expires off` keeps an `expires` of the operator's from replacing the last). nginx
  checks If-Match and If-Unmodified-Since against its validators before those headers are
  set, so requests that carry them are served by filestore itself (they are rare on GETs).
- Ranges: nginx does one range (`max_ranges 1`) from the client's own Range header, so only a
  header in the plain form `bytes=A-B`, `bytes=A-` or `bytes=-N` that filestore found to be one
  satisfiable range is left to it; nginx computes the same bytes from it. If-Range is checked
  by nginx against filestore's ETag (set by then), so an If-Range that is exactly that ETag is
  fine; a date, or anything else, is served by filestore. So are several ranges (filestore
  merges overlapping ones, nginx does not) and a Range that filestore ignores.
- Only requests that carry `X-Filestore-Accel: on` are redirected: nginx sets it on what it
  proxies, and leaves it off when it falls back to filestore (a cache entry evicted between
  this answer and nginx's open: nginx's 404 goes back to filestore, which reads through the
  cache as for any miss). A client talking to filestore directly always gets the bytes, never
  an empty redirect it cannot follow.

The path is percent-encoded in the redirect (nginx decodes it exactly once), so every valid
path, with spaces, `%`, `?`, `#` or any Unicode, reaches exactly its own file.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from .responses import SANDBOX

ACCEL_HEADER = b"x-filestore-accel"
_SANDBOX = SANDBOX.encode("latin-1")
# Single ranges nginx parses exactly as `ranges.parse_range` does (digits bounded alike).
_PLAIN_RANGE = re.compile(r"bytes=(?:[0-9]{1,18}-[0-9]{0,18}|-[0-9]{1,18})")
# Request headers that decide whether nginx's answer would equal filestore's.
_WATCHED = frozenset((ACCEL_HEADER, b"range", b"if-range", b"if-match", b"if-unmodified-since"))


def _watched_headers(request: Request) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _WATCHED:
            text = value.decode("latin-1")
            # A repeated field is combined as RFC 9110 says; a combined Range or If-Range is
            # then never the plain form below, so filestore serves it.
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found


class Redirect(Response):
    """The empty 200 that hands the sending to nginx; `length`: the bytes nginx will send.

    Its raw headers are built directly: Starlette's header set-up would cost more than all
    the rest of this answer, which is the hot path of small files behind nginx.
    """

    def __init__(self, headers: list[tuple[bytes, bytes]], length: int) -> None:
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [*headers, (b"content-length", b"0")]
        self.length = length


def redirect(
    request: Request,
    prefix: str,
    path: str,
    size: int,
    cached: bool,
    headers: dict[str, str],
    ranges: list[tuple[int, int]] | None,
) -> Redirect | None:
    """The X-Accel-Redirect answer for a GET of `path`'s local bytes (`cached`: in the cache
    area) with these response `headers` and `ranges`; None when filestore must send the bytes
    itself."""
    found = _watched_headers(request)
    if found.get(ACCEL_HEADER) != "on":
        return None
    if b"if-match" in found or b"if-unmodified-since" in found:
        return None
    length = size
    if b"range" in found:
        if ranges is None or len(ranges) != 1 or not _PLAIN_RANGE.fullmatch(found[b"range"]):
            return None
        if_range = found.get(b"if-range")
        if if_range is not None and if_range != headers["etag"]:
            return None
        first, last = ranges[0]
        length = last - first + 1
    target = f"{prefix}{'cache' if cached else 'files'}/{quote(path, safe='/')}"
    # nginx keeps Content-Type, Content-Disposition, Cache-Control and Accept-Ranges of this
    # answer; the shipped config puts back ETag, Last-Modified and Content-Security-Policy,
    # and adds X-Content-Type-Options.
    answer = [
        (b"x-accel-redirect", target.encode("ascii")),
        (b"etag", headers["etag"].encode("latin-1")),
        (b"last-modified", headers["last-modified"].encode("latin-1")),
        (b"content-type", headers["content-type"].encode("latin-1")),
        (b"content-security-policy", _SANDBOX),
    ]
    disposition = headers.get("content-disposition")
    if disposition is not None:
        answer.append((b"content-disposition", disposition.encode("latin-1")))
    cache_control = headers.get("cache-control")
    if cache_control is not None:
        answer.append((b"cache-control", cache_control.encode("latin-1")))
    if b"range" in found:
        # nginx's range filter adds Accept-Ranges to a whole body itself (so it would be
        # there twice), but not to the 206 it makes of a range.
        answer.append((b"accept-ranges", b"bytes"))
    return Redirect(answer, length)
