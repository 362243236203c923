"""Dropping the bytes a change on another node superseded.

A DELETE or re-PUT on node B of a file node A held, or of one A had cached, commits on B: from
then on every node answers the new state (the row names another holder, version, or nothing,
and A's cache entry went with the change, migration 13), and the registry lists the bytes A
must drop in `stale_bytes`. A's sweeper takes its rows every `SWEEP_SECONDS` and, in a write
transaction (so no install of the path here interleaves), unlinks what the row no longer
names: local bytes of a file A no longer holds, cached bytes with no cache entry of A's. A
cached copy a reader has open stays until the next round (its reader finishes first).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

import anyio

from .. import logs, recovery
from ..errors import InUse
from ..logs import Failing

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("filestore.cluster")

SWEEP_SECONDS = 1.0
_BATCH = 200
# The copies kept for other nodes are looked over every this many rounds; one no row names is
# removed once nobody wrote it for this long (a PUT's copy is made before its commit).
_REPLICA_ROUNDS = 60
REPLICA_GRACE = 600.0


def sweep(store: Store) -> int:
    """One round over this node's stale rows: how many paths' stale bytes were dropped. A
    path that fails (a reader holds its cached copy, the disk refuses) keeps its row for the
    next round; the others go on."""
    dropped, after = 0, ""
    while page := store.registry.read.stale.pending(_BATCH, after):
        for path in page:
            try:
                dropped += _settle(store, path)
            except Exception as exc:
                log.warning("cluster: could not drop the stale bytes of %r: %s: %s", path,
                            type(exc).__name__, exc)
        after = page[-1]
    return dropped


def _settle(store: Store, path: str) -> int:
    """Drop what this node has of `path` that its row no longer names, in one transaction
    (no install of the path here interleaves); 1 if done, 0 if it must wait."""
    local = store.local
    with store.registry.transaction() as tx:
        record = tx.files.get(path)
        if record is None or not store.holds(record):
            local.remove_local(path)
        elif record.location == "remote" and local.path_of(path).is_file():
            # The node keeping a copy uploaded it: these bytes go to the cache area, as
            # after an upload of this node's own.
            store.hand_to_cache(tx, record)
        if tx.cache.get(path) is None:
            try:
                local.drop_cached(path)
            except InUse:
                return 0  # a reader has it open: next round
        tx.stale.remove(path)
    logs.event(log, "cluster.stale_dropped", "cluster: dropped the bytes of {path!r} a "
               "change on another node superseded", level=logging.DEBUG, path=path)
    return 1


def sweep_replicas(store: Store, now: float) -> int:
    """The copies kept for other nodes that the registry no longer names (uploaded,
    replaced, deleted, or made for a PUT that then failed), once nobody wrote them for
    `REPLICA_GRACE` seconds: a PUT's copy is made before its row, which then names it."""
    named = {(hashlib.sha256(path.encode()).hexdigest(), sha256)
             for path, sha256 in store.registry.read.files.held_copies()}
    dropped = 0
    for path_hash, sha256, copy in list(store.local.replica_copies()):
        if (path_hash, sha256) not in named:
            dropped += store.local.drop_replica(copy, now - REPLICA_GRACE)
    return dropped


async def sweep_every(store: Store) -> None:
    failing = Failing(log, "cluster: dropping stale bytes")
    rounds = 0
    while True:
        try:
            await anyio.to_thread.run_sync(sweep, store)
            # PUTs the registry lost at COMMIT (an outage): recorded as a restart would.
            await anyio.to_thread.run_sync(recovery.interrupted, store)
            if rounds % _REPLICA_ROUNDS == 0:
                await anyio.to_thread.run_sync(sweep_replicas, store, time.time())
            rounds += 1
            failing.ok()
        except Exception as exc:  # the registry or the disk: next round
            failing.failed(exc)
        await anyio.sleep(SWEEP_SECONDS)
