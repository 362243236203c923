"""`build_app(settings)`: the Starlette application and the lifespan that owns its services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import api
from .config import Settings, load_settings
from .errors import FilestoreError
from .store import Store

log = logging.getLogger("filestore")


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FilestoreError)
    if exc.status >= 500 and exc.status != 507:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    response = error_response(exc.status, exc.code, exc.detail)
    if exc.status == 401:
        response.headers["www-authenticate"] = 'Bearer realm="filestore"'
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Logged with its traceback for the operator; the client gets no internals.
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "an unexpected error; see the server log")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = Store(settings)
        app.state.store = store
        try:
            yield
        finally:
            store.close()

    return Starlette(
        routes=[Route("/healthz", healthz), *api.routes],
        exception_handlers={
            FilestoreError: _domain_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )


def app_from_environment() -> Starlette:
    """Factory for uvicorn worker processes: settings from `$FILESTORE_CONFIG` and the env."""
    return build_app(load_settings())
