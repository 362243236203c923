"""What a server does once at start, in the background, when it is alone on the data directory:
abort the multipart uploads a crash left on each remote, and repair the cache area's index."""

from __future__ import annotations

import logging

import anyio

from .cache.reconcile import reconcile
from .errors import RemoteError
from .remote import Remote
from .store import Store

log = logging.getLogger("filestore")


async def cleanup_remote(remote: Remote) -> None:
    """Abort what crashed uploads left on the remote; a failure here only delays that."""
    try:
        count = await remote.cleanup()
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
        await anyio.to_thread.run_sync(reconcile, store.registry, store.local)
    except Exception as exc:
        log.error("cache: start-up repair failed: %s: %s", type(exc).__name__, exc)

