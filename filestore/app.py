"""`build_app(settings)`: the Starlette application and the lifespan that owns its services."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admin, api, hitlog, logs, metrics, serving
from .cluster import endpoint as cluster_endpoint
from .config import Settings, load_settings
from .errors import FilestoreError, RegistryUnavailable, RemoteUnavailable
from .health import RETRY_AFTER_SECONDS, healthz, readyz
from .responses import FileBody
from .s3api.app import S3App
from .service import Service, service_of

log = logging.getLogger("filestore")

# A 503 for the cloud unreachable (a file only the cloud has) or the registry's database server
# away passes: the work resumes by itself, and the answer says when to ask again
# (`health.RETRY_AFTER_SECONDS`, the one value).
_TRANSIENT = (RemoteUnavailable, RegistryUnavailable)


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FilestoreError)
    if exc.status >= 500 and exc.status != 507:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    response = error_response(exc.status, exc.code, exc.detail)
    if isinstance(exc, _TRANSIENT):
        response.headers["retry-after"] = str(RETRY_AFTER_SECONDS)
    if exc.status == 401:
        response.headers["www-authenticate"] = 'Bearer realm="filestore"'
    return response


def cut_mid_body(exc: Exception, method: str, path: str) -> bool:
    """Whether `exc`, raised after an answer's status went out, is a known failure of its
    bytes' source (a cache fill that failed, which said why when it did; a peer or the cloud
    gone mid-body): then it is one line here, and the caller returns with the body unfinished,
    which makes the server close the connection (the client never sees a clean end). Anything
    else is a bug, and propagates with its traceback."""
    if not isinstance(exc, FilestoreError):
        return False
    log.info("%s %s: cut off mid-body: %s", method, path, exc.detail)
    return True


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left mid-body; nothing was stored and nobody is there to answer.
    log.info("%s %s: the client disconnected mid-request", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client disconnected")


# What Starlette's router answers for a path it has no route for (see _http_error).
_NOT_FOUND = error_response(404, "not_found", "Not Found")


class CatchUnexpected:
    """Answer an unexpected error with a JSON 500, logged with its traceback for the operator.

    Starlette's own handler for `Exception` answers too but then re-raises to the server, which
    closes the connection under the answer. Mid-body nothing can be answered any more: then the
    error propagates and the server cuts the connection, so a client never sees a clean end.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            if started:
                if cut_mid_body(exc, scope["method"], scope["path"]):
                    return
                raise
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            response = error_response(500, "internal_error",
                                      "an unexpected error; see the server log")
            await response(scope, receive, send)


class FastReads:
    """GET and HEAD of `/files/{path}` go straight to `api.get_file`; all else through Starlette.

    A small-file GET is the product's hot path, and Starlette's middleware and router cost about
    a quarter of it (measured with bench/serve.py: 9.4k -> 11.9k req/s for 1 KiB, 2 workers).
    The handler, its errors and their JSON are exactly those of the Starlette route it skips,
    and it is counted in the request metrics as everything else is, from what its answer says
    it sent (`FileBody.sent_status`, `sent_bytes`): wrapping `send` in two closures, for the
    metrics and for `CatchUnexpected`, cost more than a tenth of a 1 KiB GET.

    With `admin_listen` ("HOST:PORT", `admin.listen`) the admin page has a listener of its
    own (serving.py binds it): `/admin` answers only there, and there only `/admin...` and
    `/healthz` answer; everything else is 404, as for a route that does not exist.
    """

    def __init__(self, app: Starlette, data_dir: Path, access_log: bool = False,
                 admin_listen: str = "", s3_port: int = 0) -> None:
        self.app = app
        self._admin = serving.AdminListener.of(admin_listen) if admin_listen else None
        # The S3 endpoint's listener (`s3.port`, on whichever address `serve --host` bound):
        # what arrives there is S3's (s3api/).
        self._s3 = serving.AdminListener(s3_port, None) if s3_port else None
        self._s3_app = S3App()
        # Every request is counted (metrics.py) before it is dispatched.
        self._counted = metrics.RequestMetrics(self._dispatch, metrics.start(data_dir),
                                               access_log=access_log)
        self._service: Service | None = None  # the lifespan's, once a file is read

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._is_file_read(scope):
            await self._serve_file(scope, receive, send)
        elif scope["type"] == "lifespan":
            try:
                await self._counted(scope, receive, send)
            finally:  # the server is stopping: nothing reads the files kept open any more
                service = getattr(self.app.state, "service", None)
                if service is not None:
                    service.store.local.kept.close()
                self._service = None
        else:
            await self._counted(scope, receive, send)

    def _is_file_read(self, scope: Scope) -> bool:
        """A GET or HEAD of `/files/{path}` on the listener that serves files."""
        path: str = scope["path"]
        if (scope["method"] not in ("GET", "HEAD") or not path.startswith("/files/")
                or path == "/files/"):
            return False
        if self._s3 is not None and self._s3.serves(scope.get("server")):
            return False  # S3's (see _dispatch)
        return self._admin is None or self._listener_serves(scope, path)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._s3 is not None and scope["type"] == "http" and self._s3.serves(
                scope.get("server")):
            scope["app"] = self.app
            await self._s3_app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._admin is not None and scope["type"] == "http" and not self._listener_serves(
                scope, path):
            await _NOT_FOUND(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _listener_serves(self, scope: Scope, path: str) -> bool:
        """Whether the listener the request came in on answers `path` (with admin.listen)."""
        assert self._admin is not None
        admin_path = path == "/admin" or path.startswith("/admin/")
        if self._admin.serves(scope.get("server")):
            return admin_path or path == "/healthz"
        return not admin_path

    async def _serve_file(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`api.get_file`, its domain errors answered as the Starlette route's are, anything
        else as `CatchUnexpected` answers it; counted in the request metrics."""
        started = time.perf_counter()
        service = self._service
        if service is None:
            service = self._service = service_of(self.app.state)
        ready = api.ready_answer(service, scope)
        if ready is not None:  # most GETs of a small file: all is known, only sending is left
            headers, body = ready
            if scope["method"] == "HEAD":
                body = b""
            status = sent = 0  # as counted when the client went away before the answer did
            try:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                status = 200
                await send({"type": "http.response.body", "body": body})
                sent = len(body)
            finally:
                self._counted.count(scope, "files", status, 0, sent, started)
            return
        path = scope["path"]
        scope["app"] = self.app
        scope["path_params"] = {"path": path[len("/files/"):]}
        request = Request(scope, receive)
        response: Any = None
        outcome = _Outcome()
        try:
            try:
                response = await api.read_file(service, request)
            except FilestoreError as exc:
                response = await _domain_error(request, exc)
            if isinstance(response, FileBody):
                await response(scope, receive, send)
                outcome.status, outcome.sent = response.sent_status, response.sent_bytes
            else:  # 304, 416, an error: few enough to watch their `send`
                await response(scope, receive, outcome.watching(send))
        except Exception as exc:
            if isinstance(response, FileBody):
                outcome.status, outcome.sent = response.sent_status, response.sent_bytes
            if outcome.status:  # mid-body: the server cuts the connection, as CatchUnexpected
                if cut_mid_body(exc, scope["method"], path):
                    return
                raise
            log.exception("unexpected error on %s %s", scope["method"], path)
            await error_response(500, "internal_error", "an unexpected error; see the server "
                                 "log")(scope, receive, outcome.watching(send))
        finally:
            self._counted.count(scope, "files", outcome.status, 0, outcome.sent, started)


class _Outcome:
    """The status and body bytes an answer sent, for the request metrics."""

    __slots__ = ("sent", "status")

    def __init__(self) -> None:
        self.status = 0
        self.sent = 0

    def watching(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))
            await send(message)

        return watched


def build_app(settings: Settings) -> FastReads:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Service.serving(settings) as service, anyio.create_task_group() as tg:
            app.state.service = service
            tg.start_soon(metrics.flush_every)
            if service.store.local.static is not None:  # the hits nginx answers (hitlog.py)
                tg.start_soon(hitlog.run, service, settings)
            yield
            tg.cancel_scope.cancel()

    return FastReads(Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                Route("/metrics", metrics.metrics), *api.routes, *admin.routes,
                *cluster_endpoint.routes],
        middleware=[Middleware(CatchUnexpected)],
        exception_handlers={
            FilestoreError: _domain_error,
            ClientDisconnect: _client_gone,
            HTTPException: _http_error,
        },
        lifespan=lifespan,
    ), settings.data_dir, access_log=settings.server.access_log == "json",
        admin_listen=settings.admin.listen, s3_port=settings.s3.port)


def app_from_environment() -> FastReads:
    """Factory for uvicorn worker processes: settings from `$FILESTORE_CONFIG` and the env;
    the `filestore` log set up once in each."""
    settings = load_settings()
    logs.configure(settings)
    return build_app(settings)
