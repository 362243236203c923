"""What the admin page and its JSON API can do, once, for both: the handlers only parse and answer.

Each operation takes the application's state (the store, the remotes, the workers) and raises
domain errors, which the edge turns into a JSON error or a message on the page.
"""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
from starlette.datastructures import State

from .. import live_settings, overrides, paths
from ..errors import BadRequest, Conflict, NotFound
from ..probe import ProbeResult
from ..queue import moves
from ..registry import Job
from ..store import Store
from .files import ACTIONS, FileState, describe


def store_of(state: State) -> Store:
    return state.store  # type: ignore[no-any-return]


def file_state(state: State, path: str) -> FileState:
    store = store_of(state)
    record = store.lookup(path)
    return describe(store.registry.read, store.local, [record])[0]


async def file_action(state: State, path: str, action: str) -> tuple[str, bool]:
    """Run one of `files.ACTIONS` on `path`: a sentence saying what happened, and whether
    anything changed."""
    store = store_of(state)
    path = paths.normalize(path)
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r} (known: {', '.join(ACTIONS)})")
    if action == "upload":
        await anyio.to_thread.run_sync(_upload_now, store, path)
        state.workers.wake()
        return f"{path} will upload now", True
    if action == "local":
        moved = await moves.bring_local(store, state.remotes, path)
        return (f"{path} is local again", True) if moved else (f"{path} was local already", False)
    if action == "evict":
        if await store.evict(path):
            return f"{path} evicted from the cache", True
        return f"{path} was not cached", False
    if action == "retry":
        if not await anyio.to_thread.run_sync(_retry, store, path):
            raise Conflict(f"{path!r} has no failed upload to retry")
        state.workers.wake()
        return f"{path} will be retried now", True
    await store.delete(path)
    return f"{path} deleted", True


def _upload_now(store: Store, path: str) -> None:
    with store.registry.transaction() as tx:
        record = tx.files.get(path)
        if record is None:
            raise NotFound(f"no file at {path!r}")
        if record.location == "remote":
            raise Conflict(f"{path!r} is in the cloud already")
        route = store.route(path, record.content_type)
        if not route.upload:
            raise Conflict(f"the storage plan keeps {path!r} local (rule {route.rule})")
        tx.queue.upload_now(path, record.version, route.remote, time.time())


def _retry(store: Store, path: str | None) -> int:
    with store.registry.transaction() as tx:
        return tx.queue.retry(path, time.time())


async def retry_failed(state: State, path: str | None) -> int:
    """Give failed queue rows (one path's, or all with None) fresh attempts, due now."""
    count = await anyio.to_thread.run_sync(_retry, store_of(state),
                                           None if path is None else paths.normalize(path))
    state.workers.wake()
    return count


async def drop_queued(state: State, path: str) -> bool:
    store = store_of(state)

    def drop() -> bool:
        with store.registry.transaction() as tx:
            return tx.queue.drop(paths.normalize(path))

    return await anyio.to_thread.run_sync(drop)


async def start_job(state: State, kind: str, delete_remote: bool = False) -> Job:
    store = store_of(state)
    job = await anyio.to_thread.run_sync(moves.start, store, kind, delete_remote)
    state.runner.wake()
    return job


async def cancel_job(state: State, job_id: int) -> Job:
    store = store_of(state)

    job = await anyio.to_thread.run_sync(moves.cancel, store, job_id)
    state.runner.wake()
    return job


def job_id(raw: str) -> int:
    """A job id from a URL: a whole number (400 otherwise, never an overflow)."""
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest("a job id is a whole number")
    return int(raw)


def job(state: State, job_id: int) -> Job:
    return store_of(state).registry.read.jobs.get(job_id)


def settings_view(state: State) -> dict[str, Any]:
    store = store_of(state)
    return overrides.describe(store.settings, overrides.saved(store.registry.read))


async def save_settings(state: State, changes: Any) -> ProbeResult:
    if not isinstance(changes, dict) or not changes:
        raise BadRequest("send the settings to change, as {section: {key: value}}")
    return await live_settings.save(store_of(state), state.reloader, changes)
