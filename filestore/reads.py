"""Reading the current version of a file for an answer, whatever the protocol: `/files/`
(`api.py`) and the S3 endpoint (`s3api/objects.py`) read alike, each answering in its own
terms (`Answers`). The bytes come from local disk (a small file kept open after its first GET:
`kept.KeptFiles`) or through the cache from the cloud; RFC 9110's conditions and Range are
decided here, and the cache's hits counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import anyio
from starlette.requests import Request
from starlette.responses import Response

from . import accel
from .conditional import Validators, check_preconditions, if_range_allows
from .ranges import RangeNotSatisfiable, parse_range
from .registry import FileRecord
from .responses import SANDBOX, ByteSource, FileBody, LocalBytes, MemoryBytes, NoBytes
from .service import Service

# On every answer with a file's bytes or headers, S3's too. Bytes a client may name the wrong
# type for: never let a browser sniff them into HTML; and whatever they are, a browser renders
# them sandboxed, in an origin of their own, with no script (docs/http.md "Served inert").
SAFE_HEADERS = {"x-content-type-options": "nosniff", "accept-ranges": "bytes",
                "content-security-policy": SANDBOX}


def encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI answer sends them (`FileBody.whole`)."""
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


# Request headers that make a GET conditional or partial; most GETs carry none of them.
CONDITIONAL = frozenset((b"if-match", b"if-none-match", b"if-modified-since",
                         b"if-unmodified-since", b"range", b"if-range"))


def conditional_headers(request: Request) -> dict[str, str]:
    """The conditional headers, read from the raw scope in one pass (a repeated field's
    lines are combined with ", ", as RFC 9110 section 5.3 allows)."""
    found: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        if name in CONDITIONAL:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found


async def open_for_read(service: Service, path: str
                        ) -> tuple[FileRecord, LocalBytes | MemoryBytes | None, bool]:
    """The record, its very bytes if they are on local disk (None: only the cloud has them),
    and whether those are the cache's. A small file is kept open after its first GET
    (`kept.KeptFiles`): the next ones find it there, proven current by one `stat`."""
    kept_files = service.store.local.kept
    kept = kept_files.find(path)
    if kept is not None:
        borrowed = kept.borrow()
        if borrowed is not None:
            return kept.record, borrowed, kept.cached
    record, fd, cached = await service.open_current(path)
    if fd is None:
        return record, None, cached
    kept = kept_files.keep(path, record, fd, cached, service.store.local.opened_at(path, cached))
    if kept is not None:  # it owns the fd now
        borrowed = kept.borrow()  # a cache entry's fd holds its shared lock already: no fail
        assert borrowed is not None
        return record, borrowed, cached
    return record, LocalBytes(fd), cached


class Answers(Protocol):
    """A read's answers in its protocol's own terms, for the version found: `/files/`'s
    (`_FileAnswers`) or the S3 endpoint's (s3api/objects.py); the read is `serve_read`'s."""

    @property
    def validators(self) -> Validators: ...
    # The headers of a 200, 206 or HEAD but content-length (a new dict: the answer adds to it).
    def headers(self) -> dict[str, str]: ...
    # The headers of a 200 or HEAD of the whole file, encoded, content-length included.
    def whole(self) -> list[tuple[bytes, bytes]]: ...
    def not_modified(self) -> Response: ...  # a 304
    # The answer (416) to a Range that asks for nothing the file has; or raise it.
    def not_satisfiable(self, exc: RangeNotSatisfiable) -> Response: ...


async def serve_read(request: Request, service: Service, path: str,
                     answers_for: Callable[[FileRecord], Answers], accel_prefix: str = ""
                     ) -> Response | FileBody:
    """A GET or HEAD of the current version of the file at `path` (normalized, authorized)
    for either protocol: the bytes from local disk (a small file kept open: `open_for_read`) or read
    through the cache from the cloud, RFC 9110's conditions and Range, the cache's hits
    counted. `answers_for`: the protocol's own answers for the version found (NotFound and
    PreconditionFailed are raised for it to answer); `accel_prefix`: nginx sends the bytes."""
    record, local, cached = await open_for_read(service, path)
    static = service.store.local.static
    if static is not None and local is not None and static.wants(service.settings, record):
        await anyio.to_thread.run_sync(static.offer, service.store, record, cached)
    headers: dict[str, str] | None = None
    ranges: list[tuple[int, int]] | None = None
    try:
        answers = answers_for(record)
        conditions = conditional_headers(request)
        if conditions or accel_prefix:
            answer = answer_conditions(request.method, answers, record.size, conditions)
            if isinstance(answer, Response):  # 304 or 416: no bytes needed
                if local is not None:
                    local.close()
                return answer
            headers, ranges = answer
    except BaseException:
        if local is not None:
            local.close()
        raise
    send_body = request.method != "HEAD"
    cache = service.read_through
    if local is not None and send_body and accel_prefix:
        assert headers is not None
        handed = accel.redirect(request, accel_prefix, path, record.size, cached, headers,
                                ranges)
        if handed is not None:  # nginx sends the bytes: it opens the file itself
            local.close()
            if cached:
                cache.usage.hit(path, handed.length)
            return handed
    source = await byte_source(service, record, local, ranges, send_body)
    response: FileBody
    if headers is None:  # most GETs: no conditions, the whole file
        response = FileBody.whole(source, record.size, answers.whole(), send_body)
    else:
        response = FileBody(source, record.size, headers, ranges=ranges, send_body=send_body)
    if cached and send_body:
        cache.usage.hit(path, response.length)
    return response


async def byte_source(service: Service, record: FileRecord, local: ByteSource | None,
                      ranges: list[tuple[int, int]] | None, send_body: bool = True
                      ) -> ByteSource:
    """An answer's bytes: `local`, none (a HEAD, an empty file), or the cloud's, read through
    the cache (only the cloud has them)."""
    if local is not None:
        return local
    if not send_body or record.size == 0:
        return NoBytes()
    return await service.read_through.open(record, ranges)


def answer_conditions(
    method: str, answers: Answers, size: int, conditions: dict[str, str],
) -> Response | tuple[dict[str, str], list[tuple[int, int]] | None]:
    """The response headers and the ranges to send, or a finished answer (304, 416)."""
    if conditions:
        if check_preconditions(method, conditions, answers.validators) == 304:
            return answers.not_modified()
        range_header = conditions.get("range")
        if range_header is not None and if_range_allows(conditions, answers.validators):
            try:
                return answers.headers(), parse_range(range_header, size)
            except RangeNotSatisfiable as exc:
                return answers.not_satisfiable(exc)
    return answers.headers(), None
