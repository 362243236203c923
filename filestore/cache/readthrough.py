"""Serving files whose bytes are only in the cloud: one fill per object, many readers.

`open` decides where a response's bytes come from:
- a fill of the object already running in this process: follow it (single flight);
- else a new fill, if the cache can make room for the object: this process downloads it when it
  takes the object's fill lock, or follows the process that holds it;
- straight from the cloud (`RemoteBytes`), kept nowhere: for an object larger than the whole
  cache or than the room eviction can make, and for a range that starts more than `FAR_AHEAD`
  bytes beyond what the fill has written (a player seeking to the end of a video should not wait
  for the whole download; the fill goes on and the next read hits the cache).

A fill that loses all its readers runs to the end: the bytes are on their way, and the next
reader finds them in the cache. Fills download at the node's `cache.download_bandwidth`
(bandwidth.py). A followed fill is another process's download, paced there; reads straight
from the cloud (`RemoteBytes`) are not paced.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .. import logs
from ..bandwidth import DOWNLOAD, node_bucket
from ..cluster.peers import Peers
from ..config import DEFAULT_REMOTE
from ..errors import FilestoreError, RemoteError, RemoteIntegrityError, RemoteNotFound
from ..fsutil import fsync_dir
from ..registry import FileRecord, Tables
from ..remote import Readable, Remote
from ..responses import ByteSource, LocalBytes
from ..store import Store
from .fill import Fill, FillBytes, Filling, ForeignFill
from .gc import CacheGC
from .lock import FillLock, fill_name
from .passthrough import RemoteBytes
from .usage import Usage

log = logging.getLogger("filestore.cache")

# A range starting this far beyond the fill's progress is fetched on its own (see above). At a
# few hundred MB/s from the store the fill covers this in well under a ranged GET's round trip.
FAR_AHEAD = 16 * 1024 * 1024
# Usage is written and the budget checked this often, and after every fill.
MAINTAIN_INTERVAL = 1.0
# Tries to join another process's fill whose file is not there yet (just starting or ending).
_JOIN_TRIES = 5
_JOIN_WAIT = 0.005


class ReadThrough:
    def __init__(self, store: Store, remotes: dict[str, Remote], task_group: TaskGroup) -> None:
        self.store = store
        self.remotes = remotes
        self.peers = Peers(store)  # files only another node holds are read from it
        self.task_group = task_group  # fills outlive the request that started them
        self.stall = store.settings.cache.fill_timeout
        self.usage = Usage(store.registry)
        self.gc = CacheGC(store.registry, store.local, store.settings.cache,
                          last_read=self.usage.last_read)
        self._fills: dict[str, Filling] = {}  # by path, on the event loop's thread only
        self._reserved = 0  # bytes of this process's running fills, not yet in the index
        self._wake = anyio.Event()
        # The node's download cap, at the rate the settings in force name (read at every step).
        self.bandwidth = node_bucket(store.datadir.root, DOWNLOAD,
                                     lambda: store.settings.cache.download_bandwidth)

    async def open(self, record: FileRecord, ranges: list[tuple[int, int]] | None) -> ByteSource:
        """The bytes for one response of `record` (whole, or `ranges` in the order they are
        sent). Waits for the first bytes, and raises the download's error if it failed before
        them, so the client gets a status, not a broken body."""
        parts = ranges or [(0, record.size - 1)]
        remote = self._source_for(record)
        self.usage.count("misses")
        fill = self._running_fill(record)
        if fill is None:
            started = await self._start(record, remote)
            if isinstance(started, LocalBytes):
                return started
            fill = started
        if fill is None or parts[0][0] > fill.written + FAR_AHEAD:
            return await self._pass_through(record, remote, parts)
        reader = FillBytes(fill, max(last for _, last in parts))
        try:
            while fill.written == 0 and not fill.finished:
                await fill.changed()
            if fill.error is not None and fill.written == 0:
                raise fill.error
        except BaseException:  # the error, or a client that left while it waited
            await reader.aclose()
            raise
        return reader

    def _source_for(self, record: FileRecord) -> Readable:
        """The cloud, or the node holding bytes not uploaded yet (a shared registry's)."""
        if record.location == "local" and not self.store.holds(record):
            return self.peers.source(record)
        remote = self.remotes.get(record.remote or DEFAULT_REMOTE)
        if remote is None:
            raise RemoteError(f"{record.path!r} is in the remote {record.remote!r}, "
                              "which is not configured")
        return remote

    async def _pass_through(self, record: FileRecord, remote: Readable,
                            parts: list[tuple[int, int]]) -> RemoteBytes:
        self.usage.count("passthrough")
        source = RemoteBytes(remote, record, parts, self.stall, self.usage)
        try:
            await source.start()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await source.aclose()
                if isinstance(exc, FilestoreError):
                    await self._failed(record, exc)
            raise
        return source

    # -- starting or joining a fill --------------------------------------------------------------

    async def _start(self, record: FileRecord, remote: Readable
                     ) -> Filling | LocalBytes | None:
        """A fill of `record`, run here or followed in another process; the cached bytes if
        another process has just installed them; None if the cache cannot hold it."""
        if record.size > self.gc.settings.max_size:
            return None
        incoming = record.size + self._reserved
        if self.gc.over_budget(incoming) and not (
                await anyio.to_thread.run_sync(self.gc.collect, incoming)).fits:
            return None
        name = fill_name(record.path, record.version)
        lock_path = self.store.local.tmp_dir / f"{name}.lock"
        for _ in range(_JOIN_TRIES):
            # Started meanwhile by another request here (while room was made, or this waited)?
            fill = self._running_fill(record)
            if fill is not None:
                return fill
            lock = FillLock.take(lock_path)
            if lock is not None:
                installed = self._open_installed(record)
                if installed is not None:  # another process finished it just now
                    lock.release()
                    return installed
                return self._run_here(record, remote, name, lock)
            foreign = self._join_foreign(record, name, lock_path)
            if foreign is not None:
                return foreign
            await anyio.sleep(_JOIN_WAIT)
        return None

    def _running_fill(self, record: FileRecord) -> Filling | None:
        """This process's fill of `record`'s version, unless it failed (a new one starts)."""
        fill = self._fills.get(record.path)
        if fill is None or fill.record.version != record.version or fill.error is not None:
            return None
        return fill

    def _forget(self, fill: Filling) -> None:
        """A fill ended: later requests start or join another."""
        if self._fills.get(fill.record.path) is fill:
            del self._fills[fill.record.path]

    def _open_installed(self, record: FileRecord) -> LocalBytes | None:
        opened = self.store.local.open_bytes(record.path, local=self.store.holds(record))
        if opened is None:
            return None
        fd, _ = opened
        current = self.store.registry.read.files.get(record.path)
        if (current is not None and current.version == record.version
                and current.inode == os.fstat(fd).st_ino):
            return LocalBytes(fd)
        os.close(fd)
        return None

    def _run_here(self, record: FileRecord, remote: Readable, name: str,
                  lock: FillLock) -> Fill:
        tmp = self.store.local.tmp_dir / name
        try:
            tmp.unlink(missing_ok=True)  # left by a process that died filling it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except BaseException:
            lock.release()
            raise
        fill = Fill(record, tmp, fd, lock)
        self._fills[record.path] = fill
        self._reserved += record.size
        self.usage.count("fills")
        self._spawn(self._run, fill, remote)
        return fill

    def _join_foreign(self, record: FileRecord, name: str, lock_path: Path) -> ForeignFill | None:
        tmp = self.store.local.tmp_dir / name
        try:
            lock_inode = os.stat(lock_path).st_ino
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # its owner is just starting, or just finished: look again
        fill = ForeignFill(record, tmp, fd, lock_path, lock_inode,
                           self.store.local.cached_path_of(record.path))
        self._fills[record.path] = fill
        self._spawn(self._follow, fill)
        return fill

    async def _follow(self, fill: ForeignFill) -> None:
        try:
            await fill.run(self.stall)
        finally:
            self._forget(fill)

    def _spawn(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `func` in the server's task group; an error ends it, not the server."""
        async def guarded() -> None:
            try:
                await func(*args)
            except Exception as exc:
                log.error("cache: %s failed: %s: %s", func.__name__, type(exc).__name__, exc)

        self.task_group.start_soon(guarded)

    # -- running a fill --------------------------------------------------------------------------

    async def _run(self, fill: Fill, remote: Readable) -> None:
        try:
            await fill.run(remote, self._install, self.stall, self.bandwidth.pace)
        finally:
            self._forget(fill)
            self._reserved -= fill.record.size
            self.usage.count("remote_bytes", fill.written)
            # The budget is checked after every fill (whose bytes `gc.added` counted already).
            self._wake.set()
            try:
                # Only now: until the fill left the dict, a new reader could still open it.
                fill.tmp.unlink(missing_ok=True)
            finally:
                fill.lock.release()  # after the unlink: followers then see the outcome
        if fill.error is not None:
            await self._failed(fill.record, fill.error)

    async def _failed(self, record: FileRecord, error: FilestoreError) -> None:
        """Count a failed read from the cloud; a missing object is also recorded on its file."""
        if isinstance(error, RemoteIntegrityError):
            self.usage.count("integrity_failures")
            return
        self.usage.count("fill_errors")
        if isinstance(error, RemoteNotFound):
            logs.event(log, "cache.remote_missing", "{path!r} is recorded as uploaded, but its "
                       "remote object is missing", level=logging.ERROR, path=record.path,
                       remote=record.remote)
            await anyio.to_thread.run_sync(self._record_error, record, error.detail)

    def _record_error(self, record: FileRecord, detail: str) -> None:
        with self.store.registry.transaction() as tx:
            tx.files.set_error(record.path, record.version, detail)

    def _install(self, fill: Fill) -> None:
        """Link a verified fill into the cache area and index it, if it still is the current
        version and no bytes arrived meanwhile; else drop it. In a worker thread."""
        store, local = self.store, self.store.local
        record = fill.record
        with store.registry.transaction() as tx:
            current = tx.files.get(record.path)
            if current is None or current.version != record.version or self._has_bytes(tx,
                                                                                   current):
                return
            target, inode = local.install_cached(fill.tmp, record.path)
            tx.files.set_inode(record.path, inode)
            tx.files.set_error(record.path, record.version, None)
            tx.cache.add(record.path, record.version, record.size, record.sha256,
                         time.time(), inode)
            local.link_static(store.settings, dataclasses.replace(current, inode=inode), target)
        self.gc.added(record.size)
        # The name made durable after the commit, not under the registry's lock (which a
        # shared registry's every node waits on): a crash before it loses at most this cached
        # copy, whose row start-up reconciling then drops (the cloud still has the bytes).
        fsync_dir(target.parent)

    def _has_bytes(self, tx: Tables, record: FileRecord) -> bool:
        """Whether this node has `record`'s bytes already (another process installed them, or
        they are local). With a shared registry, bytes its row does not name are stale."""
        local = self.store.local
        if not self.store.shared:
            return any(p.exists() for p in local.candidates(record.path))
        if self.store.holds(record) and local.path_of(record.path).exists():
            return True
        entry = tx.cache.get(record.path)
        return entry is not None and entry.version == record.version

    # -- upkeep ----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Bytes entered the cache: check the budget now, not at the next round, and before
        the next fill (on the event loop's thread)."""
        self.gc.stale()
        self._wake.set()

    async def maintain(self) -> None:
        """Every `MAINTAIN_INTERVAL`, and after each fill or upload: write the batched usage,
        then evict if the cache is over its budget. Runs for the server's lifetime. A round that
        fails (the disk, the registry's server away) is said once, however many follow, and
        once more when a round works again."""
        upkeep = logs.Failing(log, "cache upkeep")
        while True:
            with anyio.move_on_after(MAINTAIN_INTERVAL):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.usage.flush()
                if self.gc.over_budget(self._reserved, fresh=True):
                    await anyio.to_thread.run_sync(self.gc.collect, self._reserved)
            except Exception as exc:  # the disk or the registry: try again next round
                upkeep.failed(exc)
            else:
                upkeep.ok()
