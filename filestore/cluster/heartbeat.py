"""Heartbeats: each node's row in `nodes`, written every `interval(settings)` seconds by every
server process of the node (the same row: the newest beat wins)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from ..config import Settings
from ..logs import Failing

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("filestore.cluster")


def interval(settings: Settings) -> float:
    """A third of `cluster.dead_after` (so two lost beats never show a live node dead), at
    most 5 s and at least 0.2 s."""
    return min(max(settings.cluster.dead_after / 3, 0.2), 5.0)


def beat(store: Store, started: float) -> None:
    settings = store.settings
    with store.registry.transaction() as tx:
        tx.nodes.beat(settings.node, settings.advertise, started)


async def beat_every(store: Store) -> None:
    started = time.time()
    failing = Failing(log, "cluster: the heartbeat")
    while True:
        try:
            await anyio.to_thread.run_sync(beat, store, started)
        except Exception as exc:  # the registry is down: beat again next round
            failing.failed(exc)
        else:
            failing.ok()
        await anyio.sleep(interval(store.settings))
