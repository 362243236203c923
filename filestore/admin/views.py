"""The admin page: server-rendered HTML (Jinja2), plain forms, a little script for live figures.

Every page works without JavaScript: actions are forms that POST and redirect back (with a
one-shot message in a short-lived cookie), and figures are rendered on the server. The script only
refreshes the statistics and the running job every few seconds from `/admin/api/stats`, and the
nodes from `/admin/api/cluster`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import overrides, paths
from ..cluster import status as cluster_status
from ..errors import BadRequest, FilestoreError
from ..probe import STEPS
from ..service import service_of
from ..stats import figures, size_text
from .api import parse_job_id
from .charts_views import section as charts_section
from .files import describe
from .session import (
    CSRF_FIELD,
    Session,
    check_csrf,
    from_cookie,
    sign_in,
    sign_out,
    sign_out_everywhere,
)

HERE = Path(__file__).parent
PAGE_SIZE = 50
FLASH_COOKIE = "filestore_flash"
MAX_FORM = 64 * 1024

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters["size"] = size_text
_env.filters["count"] = lambda n: f"{n:,}"
_env.filters["quote"] = lambda s: quote(s, safe="/")
_env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
_env.filters["quota"] = lambda q: size_text(q) if q else "none"


def _render(request: Request, name: str, session: Session | None, status: int = 200,
            **context: Any) -> HTMLResponse:
    flash = request.cookies.get(FLASH_COOKIE)
    page = _env.get_template(name).render(
        csrf=session.csrf if session else "", flash=_parse_flash(flash), page=name, **context)
    response = HTMLResponse(page, status_code=status, headers={
        "cache-control": "no-store",
        # Only our own stylesheet and script; no framing (clickjacking).
        "content-security-policy": "default-src 'self'; frame-ancestors 'none'; "
                                   "form-action 'self'",
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
    })
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/admin")
    return response


def _parse_flash(raw: str | None) -> dict[str, str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {"level": str(value.get("level", "info")), "text": str(value.get("text", ""))}


def _back(where: str, text: str, level: str = "info") -> RedirectResponse:
    """Redirect after a form, carrying one message for the next page only."""
    response = RedirectResponse(where, status_code=303)
    response.set_cookie(FLASH_COOKIE, json.dumps({"level": level, "text": text[:500]}),
                        max_age=60, path="/admin", httponly=True, samesite="strict")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path of the admin page itself: never an open redirect to another site."""
    if target and target.startswith("/admin") and "//" not in target and "\\" not in target:
        return target
    return "/admin"


def _session(request: Request) -> Session | None:
    return from_cookie(request)


def _sign_in_first(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/admin/login?" + urlencode({"next": target}), status_code=303)


def signed_in(page: Callable[[Request, Session], Awaitable[Response]]
              ) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in operator, called with the session; without one, the sign-in page
    first (and back here after)."""

    @functools.wraps(page)
    async def endpoint(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _sign_in_first(request)
        return await page(request, session)

    return endpoint


async def _read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form (the only kind these pages send), parsed by the standard library:
    no multipart parser to depend on, and a size cap, since a form here is a few fields."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadRequest("send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise BadRequest(f"the form is larger than {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=64,
                          strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form is not valid URL-encoded UTF-8") from None
    return dict(pairs)


async def _form(request: Request, session: Session) -> dict[str, str]:
    """The posted form, after its CSRF token was checked."""
    form = await _read_form(request)
    check_csrf(session, form.get(CSRF_FIELD))
    return form


def _field(form: dict[str, str], name: str) -> str:
    return form.get(name, "")


# -- sign in and out -----------------------------------------------------------------------------

async def login(request: Request) -> Response:
    if request.method == "GET":
        return _render(request, "login.html", None, next=_safe_next(request.query_params.get(
            "next")), error=None)
    form = await _read_form(request)
    target = _safe_next(_field(form, "next"))
    response = RedirectResponse(target, status_code=303)
    if not await sign_in(request, response, _field(form, "token")):
        return _render(request, "login.html", None, status=401, next=target,
                       error="That is not the API token. `filestore token` prints it.")
    return response


async def logout(request: Request) -> Response:
    """End this browser's session, in every server process at once."""
    session = _session(request)
    if session is not None:
        await _form(request, session)
    response = RedirectResponse("/admin/login", status_code=303)
    await sign_out(request, response, session)
    return response


@signed_in
async def logout_everywhere(request: Request, session: Session) -> Response:
    """End every session (every browser, this one too): for a cookie that may have leaked."""
    await _form(request, session)
    ended = await sign_out_everywhere(request)
    response = _back("/admin/login", f"Signed out everywhere: {ended:,} session(s) ended.")
    await sign_out(request, response, None)
    return response


# -- pages ---------------------------------------------------------------------------------------

@signed_in
async def dashboard(request: Request, session: Session) -> Response:
    store = service_of(request.app.state).store
    stats = figures(store.registry, store.settings)
    return _render(request, "dashboard.html", session, stats=stats,
                   jobs=[j.public() for j in store.registry.read.jobs.recent(5)],
                   charts=charts_section(store.registry),
                   cluster=cluster_status.overview(store.registry.read, store.settings))


@signed_in
async def files(request: Request, session: Session) -> Response:
    service = service_of(request.app.state)
    store = service.store
    # With `admin.listen` the page has an origin of its own: the files' links name theirs.
    files_base = service.files_url() if service.settings.admin.listen else ""
    params = request.query_params
    try:
        prefix = paths.normalize_prefix(params.get("prefix", ""))
    except FilestoreError as exc:
        return _render(request, "files.html", session, status=400, prefix=params.get(
            "prefix", ""), rows=[], after="", following=None, error=exc.detail,
            files_base=files_base)
    after = params.get("after", "")
    records = store.list_files(prefix, after, PAGE_SIZE + 1)
    following = records[PAGE_SIZE - 1].path if len(records) > PAGE_SIZE else None
    rows = describe(store.registry.read, store.local, records[:PAGE_SIZE])
    return _render(request, "files.html", session, prefix=prefix, rows=rows, after=after,
                   following=following, error=None, files_base=files_base)


@signed_in
async def file_action(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    back = _safe_next(_field(form, "back") or "/admin/files")
    try:
        message, _ = await service_of(request.app.state).file_action(_field(form, "path"),
                                                  _field(form, "action"))
    except FilestoreError as exc:
        return _back(back, exc.detail, "error")
    return _back(back, message)


@signed_in
async def failed(request: Request, session: Session) -> Response:
    store = service_of(request.app.state).store
    after = request.query_params.get("after", "")
    rows = store.registry.read.queue.failed_page(after, PAGE_SIZE + 1)
    following = rows[PAGE_SIZE - 1].path if len(rows) > PAGE_SIZE else None
    return _render(request, "failed.html", session, rows=rows[:PAGE_SIZE], after=after,
                   following=following)


@signed_in
async def failed_action(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    action, path = request.path_params["action"], _field(form, "path")
    if action not in ("retry-all", "retry", "drop"):
        return _back("/admin/failed", f"no action {action!r}", "error")
    try:
        if action == "retry-all":
            count = await service_of(request.app.state).retry(None)
            return _back("/admin/failed", f"{count:,} failed uploads will be retried now")
        if action == "retry":
            count = await service_of(request.app.state).retry(path)
            return _back("/admin/failed", f"{path} will be retried now" if count else
                         f"{path} had no failed upload", "info" if count else "error")
        dropped = await service_of(request.app.state).drop(path)
        return _back("/admin/failed", f"dropped the queued work of {path}" if dropped else
                     f"nothing was queued for {path}", "info" if dropped else "error")
    except FilestoreError as exc:
        return _back("/admin/failed", exc.detail, "error")


@signed_in
async def settings(request: Request, session: Session) -> Response:
    state = request.app.state
    editable = overrides.editable(service_of(state).store.settings)
    if request.method == "GET":
        return _render(request, "settings.html", session,
                       settings=service_of(state).settings_view(), editable=editable,
                       steps=STEPS, result=None, error=None, submitted={})
    form = await _form(request, session)
    # Only what the operator changed: a field left as shown is not saved, so it keeps
    # following the config file.
    shown = service_of(state).settings_view()
    changes: dict[str, dict[str, str]] = {}
    for section, keys in editable.items():
        for key in keys:
            name = f"{section}.{key}"
            if name in form and form[name].strip() != shown[section][key].get("value", ""):
                changes.setdefault(section, {})[key] = _field(form, name)
    if not changes:
        return _back("/admin/settings", "Nothing changed.")
    result, error, status = None, None, 200
    try:
        result = await service_of(state).save_settings(overrides.nest(changes))
        status = 200 if result.ok else 422
    except FilestoreError as exc:
        error, status = exc.detail, exc.status
    if result is not None and result.ok:
        return _back("/admin/settings", f"Saved: the test against {result.remote} passed "
                     "(put, read, compare, delete)." if result.tested else "Saved.")
    return _render(request, "settings.html", session, status=status,
                   settings=service_of(state).settings_view(), editable=editable,
                   steps=STEPS, result=result, error=error, submitted=changes)


@signed_in
async def start_job(request: Request, session: Session) -> Response:
    form = await _form(request, session)
    try:
        job = await service_of(request.app.state).start_move(_field(form, "kind"),
                                         _field(form, "delete_remote") == "true")
    except FilestoreError as exc:
        return _back("/admin", exc.detail, "error")
    return _back("/admin", f"Started job {job.id}: {job.kind}.")


@signed_in
async def cancel_job(request: Request, session: Session) -> Response:
    await _form(request, session)
    try:
        job_id = parse_job_id(request.path_params["id"])
        job = await service_of(request.app.state).cancel_move(job_id)
    except FilestoreError as exc:
        return _back("/admin", exc.detail, "error")
    return _back("/admin", f"Cancelled job {job.id}.")


routes = [
    Route("/admin", dashboard, methods=["GET"]),
    Route("/admin/", dashboard, methods=["GET"]),
    Route("/admin/login", login, methods=["GET", "POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/logout/everywhere", logout_everywhere, methods=["POST"]),
    Route("/admin/files", files, methods=["GET"]),
    Route("/admin/files/action", file_action, methods=["POST"]),
    Route("/admin/failed", failed, methods=["GET"]),
    Route("/admin/failed/{action:str}", failed_action, methods=["POST"]),
    Route("/admin/settings", settings, methods=["GET", "POST"]),
    Route("/admin/jobs", start_job, methods=["POST"]),
    Route("/admin/jobs/{id}/cancel", cancel_job, methods=["POST"]),
    Mount("/admin/static", StaticFiles(directory=HERE / "static"), name="admin-static"),
]
