"""What a server does once at start, in the background, when it is alone on the data directory:
abort the multipart uploads a crash left on each remote, and repair the cache area's index."""

from __future__ import annotations

import logging
import time

import anyio

from .cache.reconcile import reconcile
from .errors import RemoteError
from .registry import in_flight
from .remote import Remote
from .store import Store

log = logging.getLogger("filestore")


async def cleanup_remote(remote: Remote, store: Store) -> None:
    """Abort what crashed uploads left on the remote; a failure here only delays that. With a
    shared registry, other nodes upload to the same remote: an upload another node leases
    right now is theirs, running, and stays."""

    def leased(path: str) -> bool:
        return in_flight(store.registry.read.queue.get(path), time.time())

    try:
        count = await remote.cleanup(leased if store.shared else None)
    except RemoteError as exc:
        log.warning("could not clean up unfinished uploads on %s: %s", remote.display_url,
                    exc.detail)
        return
    except Exception:
        log.exception("could not clean up unfinished uploads on %s", remote.display_url)
        return
    if count:
        log.info("aborted %d unfinished upload(s) on %s", count, remote.display_url)


async def repair_cache(store: Store) -> None:
    """The cache area's start-up repair, in the background; a failure is logged, not fatal
    (the cache then runs unrepaired until the next start)."""
    try:
        await anyio.to_thread.run_sync(lambda: reconcile(store.registry, store.local,
                                                         adopt=not store.shared))
    except Exception as exc:
        log.error("cache: start-up repair failed: %s: %s", type(exc).__name__, exc)

