"""Heartbeats: each node's row in `nodes`, written every `interval(settings)` seconds by every
server process of the node (the same row: the newest beat wins).

A node is judged dead by its beats alone, so nothing else the process does may hold one up: the
beats run on a thread of their own (not the event loop, whose lookups block it, nor the worker
threads the registry's writers wait in), and with PostgreSQL on a connection of their own
(`PostgresRegistry.open_heartbeats`: no pooled connection to wait for, no registry lock). A
registry that is away costs one warning and one "resumed" line, however long it stays away; the
connection is opened again by the first beat it answers.

The server answers only after its first beat was tried (`beat_every` reports started then): a
PUT it acknowledges names this node as the file's holder, and a node restarted after being
silent for `cluster.dead_after` must not be seen dead by the peers that read that file from it
(peers.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from ..config import Settings
from ..logs import Failing

if TYPE_CHECKING:
    from ..registry.postgres.nodes import Heartbeats
    from ..store import Store

log = logging.getLogger("filestore.cluster")

# How long a stopping server waits for a beat under way (one statement, or a connection
# attempt: libpq's connect_timeout bounds it); the thread is a daemon, given up on after it.
_STOP_WAIT = 15.0


def interval(settings: Settings) -> float:
    """A third of `cluster.dead_after` (so two lost beats never show a live node dead), at
    most 5 s and at least 0.2 s."""
    return min(max(settings.cluster.dead_after / 3, 0.2), 5.0)


class Heart:
    """The beats of one server process, from `run` (a thread of its own) until `stop`."""

    def __init__(self, store: Store, started: float) -> None:
        self.store = store
        self.started = started
        self._stopping = threading.Event()
        self.tried = threading.Event()  # the first beat was tried (whether it was written)
        # PostgreSQL's connection of its own, opened by the first beat the server answers.
        self._beats: Heartbeats | None = None

    def beat(self) -> None:
        settings = self.store.settings
        if not self.store.shared:  # SQLite: one node, whose writes go one at a time anyway
            with self.store.registry.transaction() as tx:
                tx.nodes.beat(settings.node, settings.advertise, self.started)
            return
        if self._beats is None:
            from ..registry.postgres import PostgresRegistry  # psycopg: only where configured

            registry = self.store.registry
            assert isinstance(registry, PostgresRegistry)  # what a shared registry is
            self._beats = registry.open_heartbeats()
        self._beats.beat(settings.node, settings.advertise, self.started)

    def run(self) -> None:
        failing = Failing(log, "cluster: the heartbeat")
        try:
            while not self._stopping.is_set():
                began = time.monotonic()
                try:
                    self.beat()
                except Exception as exc:  # the registry is down: beat again next round
                    failing.failed(exc)
                else:
                    failing.ok()
                self.tried.set()
                # A beat every `interval` from the start of the last one: a slow beat does not
                # push the next one later.
                self._stopping.wait(max(0.0, began + interval(self.store.settings)
                                        - time.monotonic()))
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        if self._beats is not None:
            self._beats.close()
            self._beats = None


async def beat_every(store: Store, *,
                     task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """The process's heartbeats, for as long as this task runs; started once the first beat
    was tried (a registry away then is the outage the beats outlast: not waited out)."""
    heart = Heart(store, time.time())
    thread = threading.Thread(target=heart.run, name="filestore-heartbeat", daemon=True)
    thread.start()
    try:
        await anyio.to_thread.run_sync(heart.tried.wait, _STOP_WAIT)
        task_status.started()
        await anyio.sleep_forever()
    finally:
        heart.stop()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, _STOP_WAIT)
