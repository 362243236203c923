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

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .. import logs
from ..errors import InUse

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("filestore.cluster")

SWEEP_SECONDS = 1.0
_BATCH = 200
# The copies kept for other nodes are looked over every this many rounds; one no row names is
# removed once nobody wrote it for this long (a PUT's copy is made before its commit).
_REPLICA_ROUNDS = 60
_ORPHAN_SECONDS = 600.0


def sweep(store: Store) -> int:
    """One round: how many paths' stale bytes were dropped."""
    dropped = 0
    local = store.local
    for path in store.registry.read.stale.pending(_BATCH):
        with store.registry.transaction() as tx:
            record = tx.files.get(path)
            if record is None or not store.holds(record):
                local.remove_local(path)
            elif record.location == "remote" and local.path_of(path).is_file() and not \
                    store.route(path, record.content_type).keep_local:
                # The node keeping a copy uploaded it: these bytes go to the cache area, as
                # after an upload of this node's own (queue/worker.py).
                local.move_to_cache(path)
                tx.cache.add(path, record.version, record.size, record.sha256, time.time(),
                             record.inode)
            keep = (record.sha256 if record is not None and record.replica == store.node
                    and record.location == "local" else None)
            local.remove_replicas(path, keep)
            if tx.cache.get(path) is None:
                try:
                    local.drop_cached(path)
                except InUse:
                    continue  # a reader has it open: next round
            tx.stale.remove(path)
        dropped += 1
        logs.event(log, "cluster.stale_dropped", "cluster: dropped the bytes of {path!r} a "
                   "change on another node superseded", level=logging.DEBUG, path=path)
    return dropped


def sweep_replicas(store: Store, now: float) -> int:
    """Copies kept for another node that no row names (their PUT failed after the copy was
    made, or the row's change was missed), once nobody wrote them for `_ORPHAN_SECONDS`."""
    dropped = 0
    local, read = store.local, store.registry.read
    for directory, _, names in os.walk(local.replica_root):
        for name in names:
            copy = Path(directory) / name
            stem, _, sha256 = name.rpartition("@")
            path = str(copy.parent.relative_to(local.replica_root) / stem).removeprefix("./")
            record = read.files.get(path)
            if record is not None and record.replica == store.node and \
                    record.location == "local" and record.sha256 == sha256:
                continue
            with contextlib.suppress(FileNotFoundError):
                if copy.stat().st_mtime < now - _ORPHAN_SECONDS:
                    copy.unlink()
                    dropped += 1
    return dropped


async def sweep_every(store: Store) -> None:
    failing = False
    rounds = 0
    while True:
        try:
            await anyio.to_thread.run_sync(sweep, store)
            if rounds % _REPLICA_ROUNDS == 0:
                await anyio.to_thread.run_sync(sweep_replicas, store, time.time())
            rounds += 1
            failing = False
        except Exception as exc:  # the registry or the disk: next round
            if not failing:
                log.warning("cluster: dropping stale bytes failed: %s: %s",
                            type(exc).__name__, exc)
            failing = True
        await anyio.sleep(SWEEP_SECONDS)
