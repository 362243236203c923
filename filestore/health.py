"""`/healthz` (the process answers) and `/readyz` (it can do its work now), for load balancers and
orchestrators.

Readiness checks, each with its result in the JSON, 503 if any fails:

- `registry`: a write transaction can be taken and committed (no stuck lock, not read-only, disk
  not full for SQLite); it writes nothing.
- `disk`: the data directory's disk has at least `storage.min_free` free (below it every PUT is
  a 507). Below `cache.min_free` the cache evicts, which is its normal work: reported, not failed.
- `remote.NAME`: each remote in use answers a HEAD of a path nobody stores (so a missing bucket
  or wrong credentials show) within `TIMEOUT` seconds. Nothing is ever written.

Every check runs at once and is bounded by `TIMEOUT`, so a probe answers within it; a 503 has
`Retry-After`. Without the API token the answer is only `{"status"}` and its status code: the
checks' details name the data directory and the remotes' endpoints, which are nobody else's
business.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import check_bearer
from .errors import FilestoreError, Unauthorized
from .remote import Remote
from .service import service_of
from .store import Store

TIMEOUT = 2.0
# A `/readyz` that fails says when to ask again, as every 503 of the registry's or the cloud's
# absence does (app.py answers those with this value too).
RETRY_AFTER_SECONDS = 5
# A path nobody is expected to store; a HEAD only reads, so a file there would change nothing.
PROBE_PATH = ".filestore-readyz"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _registry_check(store: Store) -> dict[str, Any]:
    with store.registry.transaction() as tx:
        tx.ping()
    return {"ok": True}


def _disk_check(store: Store) -> dict[str, Any]:
    free = store.local.free_bytes()
    floor = store.settings.storage.min_free
    return {"ok": free >= floor, "free": free, "min_free": floor,
            "cache_min_free": store.settings.cache.min_free,
            **({} if free >= floor else
               {"detail": f"{free} bytes free, under storage.min_free ({floor}): PUTs get 507"})}


async def _remote_check(remote: Remote) -> dict[str, Any]:
    await remote.head(PROBE_PATH)
    return {"ok": True, "url": remote.display_url}


def _in_thread(check: Callable[[Store], dict[str, Any]],
               store: Store) -> Callable[[], Awaitable[dict[str, Any]]]:
    # abandon_on_cancel: a registry stuck on a lock must not hold the answer past TIMEOUT.
    return functools.partial(anyio.to_thread.run_sync, check, store, abandon_on_cancel=True)


async def _timed(name: str, results: dict[str, Any],
                 check: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    started = time.perf_counter()
    try:
        with anyio.fail_after(TIMEOUT):
            result = await check()
    except TimeoutError:
        result = {"ok": False, "detail": f"no answer within {TIMEOUT:g} s"}
    except FilestoreError as exc:
        result = {"ok": False, "detail": exc.detail}
    except Exception as exc:  # any failure is the answer "not ready", never a 500
        result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 4)
    results[name] = result


async def local_readiness(store: Store) -> dict[str, bool]:
    """The local checks of `/readyz` (registry, disk), passed or not, each within `TIMEOUT`:
    for `filestore_ready` at every scrape. The remote check, a HEAD per remote, is not repeated
    there: an unreachable remote shows in `filestore_remote_failures_total`."""
    checks: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_timed, "registry", checks, _in_thread(_registry_check, store))
        tg.start_soon(_timed, "disk", checks, _in_thread(_disk_check, store))
    return {name: bool(check["ok"]) for name, check in checks.items()}


async def readyz(request: Request) -> Response:
    state = request.app.state
    service = service_of(state)
    store, remotes = service.store, service.remotes
    checks: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_timed, "registry", checks, _in_thread(_registry_check, store))
        tg.start_soon(_timed, "disk", checks, _in_thread(_disk_check, store))
        for name, remote in list(remotes.items()):
            tg.start_soon(_timed, f"remote.{name}", checks,
                          functools.partial(_remote_check, remote))
    ready = all(check["ok"] for check in checks.values())
    answer: dict[str, Any] = {"status": "ready" if ready else "not_ready"}
    try:
        check_bearer(request.headers.get("authorization"), store.token)
        answer["checks"] = dict(sorted(checks.items()))
    except Unauthorized:
        pass  # the status alone
    if ready:
        return JSONResponse(answer)
    return JSONResponse(answer, status_code=503,
                        headers={"retry-after": str(RETRY_AFTER_SECONDS)})
