"""The statistics page's charts of the last hour: the section in the page, and its refreshes.

`GET /admin/charts` answers the section's inner HTML (inline SVG, drawn by `charts/svg.py`),
which the page's script swaps in every sampling interval; `GET /admin/api/charts` the same
charts' series as JSON, for scripts. Both take the admin session or the operator's token (401
without: the page's script then reloads, to the sign-in page), and both read one window of
samples from the registry, a few hundred rows (on the event loop's thread, as every read of
`registry.read`); drawing them, a few milliseconds, goes to a thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import charts
from ..registry import Registry
from ..registry.samples import Sample
from ..service import service_of
from .callers import administrator


def _samples(registry: Registry, now: float) -> list[Sample]:
    return registry.read.samples.since(now - charts.window())


def _charts(samples: Sequence[Sample], now: float) -> list[charts.Chart]:
    return charts.build(samples, now, charts.interval(), charts.window())


def _draw(samples: Sequence[Sample], now: float) -> str:
    return charts.section(_charts(samples, now), charts.interval(), charts.window())


def section(registry: Registry, now: float | None = None) -> Markup:
    """The charts section's inner HTML, for the statistics page's template."""
    now = time.time() if now is None else now
    return Markup(_draw(_samples(registry, now), now))


async def fragment(request: Request) -> Response:
    administrator(request)
    now = time.time()
    samples = _samples(service_of(request.app.state).store.registry, now)
    html = await anyio.to_thread.run_sync(_draw, samples, now)
    return HTMLResponse(html, headers={"cache-control": "no-store"})


async def series(request: Request) -> Response:
    administrator(request)
    now = time.time()
    samples = _samples(service_of(request.app.state).store.registry, now)
    return JSONResponse({"interval": charts.interval(), "window": charts.window(), "time": now,
                         "charts": [c.public() for c in _charts(samples, now)]},
                        headers={"cache-control": "no-store"})


routes = [
    Route("/admin/charts", fragment, methods=["GET"]),
    Route("/admin/api/charts", series, methods=["GET"]),
]
