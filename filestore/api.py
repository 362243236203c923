"""HTTP file API: `/files/{path}` GET, HEAD, PUT, DELETE, and `/files/` listing.

Handlers translate HTTP into `Store` calls and domain errors into JSON `{"error", "detail"}`
responses (see `app.py`). The GET path of a small local file does no thread hop at all: the
registry lookup, `open` and `fstat` are each a few microseconds on the event loop, and a small
file read recently is still open (`kept.KeptFiles`), so its next GET costs one `stat` instead,
answered with the headers made for its version once (`_whole_headers`). The read itself, the
S3 endpoint's too, is `reads.serve_read`'s; this module gives it `/files/`'s answers.
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
import re
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from . import paths, plan, signing
from .accounts import Principal
from .conditional import Validators, check_preconditions, file_etag
from .config import Settings
from .errors import BadRequest, TooLarge
from .kept import KEEP_MAX_SIZE
from .ranges import RangeNotSatisfiable
from .reads import CONDITIONAL, SAFE_HEADERS, encoded, serve_read
from .registry import FileRecord
from .responses import (
    FileBody,
    attachment,
)
from .service import Service, service_of
from .store import Precondition
from .values import parse_content_md5

log = logging.getLogger("filestore")

MAX_LIST_LIMIT = 1000
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() also takes "²"
# The Cache-Control of a read that needed a credential (the token where reads are not public,
# or a signed URL), whatever the plan says: no shared cache keeps it (a CDN would hand a
# private file to anyone, or a signed URL's answer after its expiry, a single-use URL's twice),
# and a browser's own copy is checked with filestore before each reuse (a 304 while the
# credential still works), so it never outlives a revoked token or an expired URL
# (docs/http.md "Caches in front").
PRIVATE = "private, no-cache"
# What curl's --data-binary and -d send when nobody named a type: a file's body is no form, so
# on a name with a known extension its type is stored instead (docs/http.md "Content types").
_FORM_TYPE = "application/x-www-form-urlencoded"


def _service(request: Request) -> Service:
    return service_of(request.app.state)


def _file_path(request: Request) -> str:
    return paths.normalize(request.path_params["path"])


class FileRoute(Route):
    """`/files/{path}`, where `{path}` is everything after `/files/`, newlines included.

    Starlette's own pattern stops at a newline and its `$` matches before a final one, so
    `/files/victim%0A` would reach `victim`; here it reaches the path check and gets a 400.
    """

    def __init__(self, endpoint: Any, methods: list[str], prefix: str = "/files/") -> None:
        super().__init__(prefix + "{path:path}", endpoint, methods=methods)
        self.path_regex = re.compile(rf"^{re.escape(prefix)}(?P<path>.*)\Z", re.DOTALL)


def _principal(request: Request) -> Principal:
    """Who the request's token is: the administrator or an account (401 / 403 otherwise)."""
    return _service(request).accounts.authenticate(request.headers.get("authorization"))


def _authorize(request: Request, path: str, *, public: bool = False) -> signing.Grant | None:
    """A signed URL (`?expires=&sig=`, see signing.py) grants its one method on its one path and
    a bad one is refused with 403, as is one minted by an account that is now suspended or
    removed; without a signature, the token unless `public`. The grant of a signed URL, whose
    limits the handler enforces (`put_checksum`, `single_use`)."""
    query = request.scope["query_string"]
    if query:
        service = _service(request)
        grant = service.signing.check(query, request.method, path,
                                      max_expiry=service.settings.signing.max_expiry,
                                      accounts=service.accounts.find)
        if grant is not None:
            return grant
    if not public:
        _principal(request).check_path(path)
    return None


def _authorized_path(request: Request) -> tuple[str, signing.Grant | None]:
    """The path of a write, once authorized (without a query the token is checked first, as
    ever: a client without it learns nothing, not even whether its path is valid), and the
    signed URL's grant if one authorized it."""
    if not request.scope["query_string"]:
        principal = _principal(request)
        path = _file_path(request)
        principal.check_path(path)  # an account's token acts only under its own prefix
        return path, None
    path = _file_path(request)
    return path, _authorize(request, path)


def _validators(record: FileRecord) -> Validators:
    return Validators(file_etag(record), int(record.modified))


def _file_headers(settings: Settings, record: FileRecord, private: bool) -> dict[str, str]:
    """The headers of every answer with the file's bytes or headers (200, 206, HEAD, 304);
    `private`: the read needed a credential."""
    validators = _validators(record)
    headers = {"etag": validators.etag, "last-modified": validators.http_date,
               "content-type": record.content_type, **SAFE_HEADERS}
    # A dict lookup (the plan's answers for this content type, precomputed) and a startswith
    # per rule of the type that sets cache_control or inline.
    cache_control, attach = plan.served(settings, record.path, record.content_type)
    if private:
        headers["cache-control"] = PRIVATE
    elif cache_control:
        headers["cache-control"] = cache_control
    if attach:  # HTML, SVG, JavaScript ... not served inline by its rule
        headers["content-disposition"] = attachment(record.path)
    return headers


# path -> (record, settings, private, the encoded headers of a 200 of the whole file): one
# version's headers are the same for every GET of it, so a file kept open (whose record is the
# same object from GET to GET) has them made once. Bounded: the paths are the clients' to pick.
_whole: dict[str, tuple[FileRecord, Settings, bool, list[tuple[bytes, bytes]]]] = {}
_WHOLE_MAX = 4096


def _whole_headers(settings: Settings, record: FileRecord, private: bool
                   ) -> list[tuple[bytes, bytes]]:
    """The headers of a 200 (or HEAD) of the whole file, content-length included."""
    found = _whole.get(record.path)
    if (found is not None and found[0] is record and found[1] is settings
            and found[2] == private):
        return found[3]
    headers = _file_headers(settings, record, private)
    headers["content-length"] = str(record.size)
    raw = encoded(headers)
    if record.size <= KEEP_MAX_SIZE:  # larger files are not kept: their records never repeat
        if len(_whole) >= _WHOLE_MAX:
            _whole.clear()
        _whole[record.path] = (record, settings, private, raw)
    return raw


def ready_answer(service: Service, scope: Scope) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    """The headers and body of the commonest GET (or HEAD), when it needs nothing but sending:
    a public read with no query, no conditional or Range header and no nginx to hand it to, of
    a kept file whose bytes are in memory (`kept.KeptFiles`). These are exactly what
    `read_file` would answer (a 200 of the whole file, `_whole_headers`); None otherwise, and
    `read_file` answers. Most of a small file's GETs come here after its first one."""
    settings = service.settings
    if scope["query_string"] or not settings.auth.public_read or settings.server.accel_redirect:
        return None
    for name, _ in scope["headers"]:
        if name in CONDITIONAL:
            return None
    path = scope["path"][len("/files/"):]  # a kept path is a normalized one (see read_file)
    kept = service.store.local.kept.find(path)
    if kept is None:
        return None
    data = kept.memory()
    if data is None:
        return None
    if kept.cached and scope["method"] == "GET":
        service.read_through.usage.hit(path, len(data))
    return _whole_headers(settings, kept.record, False), data


async def get_file(request: Request) -> Response | FileBody:
    """The route's endpoint; `app.FastReads` calls `read_file` itself, with its service."""
    return await read_file(_service(request), request)


async def read_file(service: Service, request: Request) -> Response | FileBody:
    """GET or HEAD of `/files/{path}`."""
    raw = request.path_params["path"]
    # A kept file's path went through the path check when it was kept (and the check gives
    # back what it took), so a GET of it skips the check.
    path = raw if service.store.local.kept.holds(raw) else paths.normalize(raw)
    public = service.settings.auth.public_read
    grant = None
    if not public or request.scope["query_string"]:  # most GETs: public, no query
        grant = _authorize(request, path, public=public)
    private = not public or grant is not None
    if grant is not None and grant.once is not None:  # a single-use URL: spent by a 2xx
        async with service.single_use(grant) as use:
            response = await _read_file(request, service, path, private)
            if isinstance(response, Response):
                use.answered(response.status_code)
        return response
    return await _read_file(request, service, path, private)


async def _read_file(request: Request, service: Service, path: str, private: bool
                     ) -> Response | FileBody:
    settings = service.settings
    # Not with a shared registry: a fill of a newer version may rename over cache/PATH, and a
    # replica's copy is not in files/, between this answer and nginx's open (docs/cluster.md).
    accel_prefix = "" if service.store.shared else settings.server.accel_redirect
    return await serve_read(request, service, path,
                            lambda record: _FileAnswers(settings, record, private), accel_prefix)


@dataclasses.dataclass(slots=True)  # one per read: as cheap as can be (not frozen: half)
class _FileAnswers:
    """`/files/`'s answers to a read of `record`; `private`: the read needed a credential."""

    settings: Settings
    record: FileRecord
    private: bool

    @property
    def validators(self) -> Validators:  # only a conditional read asks
        return _validators(self.record)

    def headers(self) -> dict[str, str]:
        return _file_headers(self.settings, self.record, self.private)

    def whole(self) -> list[tuple[bytes, bytes]]:
        return _whole_headers(self.settings, self.record, self.private)

    def not_modified(self) -> Response:
        headers = self.headers()
        headers.pop("content-type")  # the rest, Cache-Control too, as the 200 (RFC 9111 4.3.4)
        return Response(status_code=304, headers=headers)

    def not_satisfiable(self, exc: RangeNotSatisfiable) -> Response:
        return JSONResponse({"error": "range_not_satisfiable", "detail": str(exc)}, 416,
                            {"content-range": f"bytes */{self.record.size}", **SAFE_HEADERS})


def _form_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip(" \t").lower() == _FORM_TYPE


def _expected_md5(request: Request) -> str | None:
    value = request.headers.get("content-md5")
    if value is None:
        return None
    try:
        return parse_content_md5(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _expected_sha256(request: Request) -> str | None:
    value = request.headers.get("x-checksum-sha256")
    if value is None:
        return None
    if not _SHA256_RE.fullmatch(value.strip()):
        raise BadRequest("X-Checksum-SHA256 must be 64 hexadecimal digits")
    return value.strip().lower()


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise BadRequest("Content-Length must be a whole number")
    return int(value)


def _precondition(request: Request, method: str) -> Precondition | None:
    """The request's preconditions as a check of the current record, for the store to run
    inside its write transaction (so nothing changes between the check and the write)."""
    headers = request.headers
    if not any(h in headers for h in ("if-match", "if-none-match", "if-unmodified-since")):
        return None

    def check(current: FileRecord | None) -> None:
        check_preconditions(method, headers, _validators(current) if current else None)

    return check


async def put_file(request: Request) -> Response:
    service = _service(request)
    path, grant = _authorized_path(request)
    length = _content_length(request)
    if length is not None and length > service.settings.storage.max_upload_size:
        raise TooLarge(
            f"Content-Length {length} is over storage.max_upload_size "
            f"({service.settings.storage.max_upload_size})"
        )
    expect_md5 = _expected_md5(request)
    expect_sha256 = _expected_sha256(request)
    content_type = request.headers.get("content-type") or None
    if grant is not None:  # a signed URL may bind the body and its type (signing.py)
        expect_sha256 = grant.put_checksum(content_type, expect_sha256)
    if content_type is not None and _form_type(content_type):
        # curl's default for --data-binary, no file's type: the name's, if it says one
        content_type = mimetypes.guess_type(path, strict=False)[0] or content_type
    async with service.single_use(grant):
        record, created = await service.put(
            path,
            request.stream(),
            content_type=content_type,
            content_length=length,
            expect_md5=expect_md5,
            expect_sha256=expect_sha256,
            precondition=_precondition(request, "PUT"),
        )
    return JSONResponse(
        {"path": record.path, "size": record.size, "sha256": record.sha256},
        status_code=201 if created else 200,
        headers={"etag": file_etag(record), "location": "/files/" + quote(record.path)},
    )


async def delete_file(request: Request) -> Response:
    path, grant = _authorized_path(request)
    service = _service(request)
    async with service.single_use(grant):
        await service.delete(path, precondition=_precondition(request, "DELETE"))
    return Response(status_code=204)


async def list_files(request: Request) -> Response:
    principal = _principal(request)
    params = request.query_params
    prefix = principal.listing_prefix(paths.normalize_prefix(params.get("prefix", "")))
    after = params.get("after", "")
    raw_limit = params.get("limit", "100")
    if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}")
    limit = int(raw_limit)
    records = _service(request).list_files(prefix, after, limit + 1)
    items = [record.public() for record in records[:limit]]
    following = records[limit - 1].path if len(records) > limit else None
    return JSONResponse({"items": items, "next": following})


routes = [
    Route("/files/", list_files, methods=["GET"]),
    FileRoute(get_file, methods=["GET", "HEAD"]),
    FileRoute(put_file, methods=["PUT"]),
    FileRoute(delete_file, methods=["DELETE"]),
]
