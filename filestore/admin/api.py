"""The admin JSON API under `/admin/api/`: what the page shows and does, for scripts and the page's
own live updates. Every route takes a bearer token or the page's session; every change made with
the session also needs its CSRF token (`session.py`). The routes here are the administrator's
alone (an account's token gets 403), but for `sign`, which an account's token may use for its
own paths; the accounts' routes are in `accounts_api.py` (`callers.py`: who calls)."""

from __future__ import annotations

import re
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import overrides, paths, signing
from ..cache.pins import PinDoesNotFit
from ..cluster import status as cluster_status
from ..errors import BadRequest
from ..service import service_of
from ..stats import figures
from ..values import parse_duration
from .accounts_api import routes as account_routes
from .callers import MAX_PAGE, administrator, caller, json_body, json_object, whole_number
from .session import sign_out_everywhere

_DIGITS = re.compile(r"[0-9]{1,18}")


def _session(request: Request) -> None:
    administrator(request)


def _change(request: Request) -> None:
    administrator(request, change=True)


async def stats(request: Request) -> Response:
    _session(request)
    store = service_of(request.app.state).store
    return JSONResponse(figures(store.registry, store.settings))


async def cluster(request: Request) -> Response:
    _session(request)
    store = service_of(request.app.state).store
    return JSONResponse(cluster_status.overview(store.registry.read, store.settings))


async def file_info(request: Request) -> Response:
    _session(request)
    path = paths.normalize(request.path_params["path"])
    return JSONResponse(service_of(request.app.state).file_state(path).public())


async def file_action(request: Request) -> Response:
    _change(request)
    path, action = request.path_params["path"], request.path_params["action"]
    message, changed = await service_of(request.app.state).file_action(path, action)
    return JSONResponse({"path": paths.normalize(path), "action": action, "changed": changed,
                         "message": message})


async def settings(request: Request) -> Response:
    if request.method == "GET":
        _session(request)
        return JSONResponse(overrides.nest(service_of(request.app.state).settings_view()))
    _change(request)
    result = await service_of(request.app.state).save_settings(await json_body(request))
    if not result.ok:
        return JSONResponse(
            {"error": "settings_test_failed", "step": result.step,
             "detail": f"{result.step} failed: {result.detail}", "remote": result.remote},
            status_code=422,
        )
    return JSONResponse({"saved": True, "remote": result.remote, "tested": result.tested,
                         "settings": overrides.nest(service_of(request.app.state).settings_view())})


async def job_list(request: Request) -> Response:
    if request.method == "GET":
        _session(request)
        store = service_of(request.app.state).store
        return JSONResponse({"items": [j.public() for j in store.registry.read.jobs.recent()]})
    _change(request)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise BadRequest('send {"kind": "move-to-cloud"} or {"kind": "move-to-local"}')
    delete_remote = body.get("delete_remote", False)
    if not isinstance(delete_remote, bool):
        raise BadRequest("delete_remote must be true or false")
    job = await service_of(request.app.state).start_move(body["kind"], delete_remote)
    return JSONResponse(job.public(), status_code=201)


def parse_job_id(raw: str) -> int:
    """A job id from a URL: a whole number (400 otherwise, never an overflow)."""
    if not _DIGITS.fullmatch(raw):
        raise BadRequest("a job id is a whole number")
    return int(raw)


def _job_id(request: Request) -> int:
    return parse_job_id(request.path_params["id"])


async def job_info(request: Request) -> Response:
    _session(request)
    return JSONResponse(service_of(request.app.state).job(_job_id(request)).public())


async def job_cancel(request: Request) -> Response:
    _change(request)
    job = await service_of(request.app.state).cancel_move(_job_id(request))
    return JSONResponse(job.public())


async def failed(request: Request) -> Response:
    _session(request)
    params = request.query_params
    limit = whole_number(params.get("limit"), "limit", 100, MAX_PAGE)
    rows = service_of(request.app.state).store.registry.read.queue.failed_page(
        params.get("after", ""), limit + 1)
    items = [{"path": e.path, "op": e.op, "attempts": e.attempts, "error": e.last_error}
             for e in rows[:limit]]
    return JSONResponse({"items": items, "next": rows[limit - 1].path if len(rows) > limit
                         else None})


async def retry(request: Request) -> Response:
    _change(request)
    body = await json_body(request)
    every = isinstance(body, dict) and body.get("all") is True
    path = body.get("path") if isinstance(body, dict) else None
    if every == isinstance(path, str):
        raise BadRequest('send {"path": "..."} or {"all": true}')
    count = await service_of(request.app.state).retry(None if every else path)
    return JSONResponse({"retried": count})


async def drop(request: Request) -> Response:
    _change(request)
    body = await json_body(request)
    path = body.get("path") if isinstance(body, dict) else None
    if not isinstance(path, str):
        raise BadRequest('send {"path": "..."}')
    return JSONResponse({"dropped": await service_of(request.app.state).drop(path)})


async def sign(request: Request) -> Response:
    """`{path, method, expires, sha256, type, once}` -> `{url, expires, ...}`: a signed URL
    (signing.py) for one method on one path; `expires` is how long it works ("1h", or seconds;
    at most signing.max_expiry), `method` GET by default; `sha256` and `type` bind a PUT's body
    and Content-Type, `once: true` makes it single-use. An account's URL names the account
    (`acct=`) and works only while it is active; the administrator's names none."""
    principal = caller(request, change=True)  # an account's token: for its own paths only
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise BadRequest('send {"path": "...", "method": "GET", "expires": "1h"}')
    path = paths.normalize(body["path"])
    principal.check_path(path)
    method = body.get("method", "GET")
    if method not in signing.METHODS:
        raise BadRequest(f"method must be one of {', '.join(signing.METHODS)}")
    lifetime = body.get("expires", "1h")
    try:
        seconds = parse_duration(lifetime)
    except ValueError as exc:
        raise BadRequest(f"expires must be {exc}") from None
    if seconds < 1:
        raise BadRequest("expires must be at least one second")
    service = service_of(request.app.state)
    refusal = signing.lifetime_refusal(seconds, service.settings.signing.max_expiry)
    if refusal:
        raise signing.LifetimeTooLong(f"expires {lifetime} is {refusal}")
    sha256, content_type, once = body.get("sha256"), body.get("type"), body.get("once", False)
    for name, value in (("sha256", sha256), ("type", content_type)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
    if not isinstance(once, bool):
        raise BadRequest("once must be true or false")
    expires = int(time.time() + seconds)
    try:
        url = service.signing.sign(method, path, expires,
                                   service.files_url(str(request.base_url)), sha256=sha256,
                                   content_type=content_type, once=once,
                                   account=principal.account)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    account = None if principal.account is None else principal.account.id
    return JSONResponse({"url": url, "expires": expires, "method": method, "path": path,
                         "once": once, "account": account})


async def cache_pins(request: Request) -> Response:
    """`GET`: the pins (cache/pins.py). `POST {"prefix", "warm": true}`: pin the prefix (409
    `pin_does_not_fit` with `needed`, `max_size` and `missing` bytes when it would not fit) and
    start warming it in the background. `DELETE ?prefix=`: unpin (404 if not pinned)."""
    service = service_of(request.app.state)
    if request.method == "GET":
        _session(request)
        return JSONResponse({"items": service.cache_pins()})
    _change(request)
    if request.method == "DELETE":
        prefix = request.query_params.get("prefix")
        if prefix is None:
            raise BadRequest("give the prefix to unpin: ?prefix=...")
        return JSONResponse({"prefix": paths.normalize_prefix(prefix),
                             "released": await service.unpin_cache(prefix)})
    body = json_object(await json_body(request), ("prefix", "warm"),
                       '{"prefix": "media/", "warm": true}')
    prefix, warm = body.get("prefix"), body.get("warm", True)
    if not isinstance(prefix, str) or not isinstance(warm, bool):
        raise BadRequest('send {"prefix": "media/"} (and "warm": true or false)')
    try:
        pinned = await service.pin_cache(prefix)
    except PinDoesNotFit as exc:
        return JSONResponse({"error": exc.code, "detail": exc.detail, "needed": exc.needed,
                             "max_size": exc.max_size, "missing": exc.missing}, status_code=409)
    warming = (await service.start_warming(pinned.prefix)).public() if warm else None
    return JSONResponse({**pinned.public(), "warm": warming},
                        status_code=201 if pinned.new else 200)


async def cache_warm(request: Request) -> Response:
    """`{"prefix"}`: start warming the prefix in this server's background; 202 with what it
    takes (`files`, `bytes`, `room`, `fits`)."""
    _change(request)
    body = json_object(await json_body(request), ("prefix",), '{"prefix": "media/"}')
    if not isinstance(body.get("prefix"), str):
        raise BadRequest('send {"prefix": "media/"}')
    planned = await service_of(request.app.state).start_warming(body["prefix"])
    return JSONResponse(planned.public(), status_code=202)


async def end_sessions(request: Request) -> Response:
    """Sign out everywhere: every admin session ends, in every process (`session.py`)."""
    _change(request)
    return JSONResponse({"ended": await sign_out_everywhere(request)})


routes = [
    Route("/admin/api/stats", stats, methods=["GET"]),
    Route("/admin/api/cluster", cluster, methods=["GET"]),
    Route("/admin/api/settings", settings, methods=["GET", "PUT"]),
    Route("/admin/api/jobs", job_list, methods=["GET", "POST"]),
    Route("/admin/api/jobs/{id}", job_info, methods=["GET"]),
    Route("/admin/api/jobs/{id}/cancel", job_cancel, methods=["POST"]),
    Route("/admin/api/queue/failed", failed, methods=["GET"]),
    Route("/admin/api/queue/retry", retry, methods=["POST"]),
    Route("/admin/api/queue/drop", drop, methods=["POST"]),
    Route("/admin/api/sign", sign, methods=["POST"]),
    Route("/admin/api/sessions/end-all", end_sessions, methods=["POST"]),
    Route("/admin/api/cache/pins", cache_pins, methods=["GET", "POST", "DELETE"]),
    Route("/admin/api/cache/warm", cache_warm, methods=["POST"]),
    Route("/admin/api/files/{path:path}/{action}", file_action, methods=["POST"]),
    Route("/admin/api/files/{path:path}", file_info, methods=["GET"]),
    *account_routes,
]
