"""Serving files whose bytes are only in the cloud: one fill per object, many readers."""

from __future__ import annotations

import os
import uuid

from anyio.abc import TaskGroup

from ..errors import RemoteError
from ..fsutil import fsync_dir
from ..registry import FileRecord
from ..remote import Remote
from ..store import DEFAULT_REMOTE, Store
from .fill import Fill, FillBytes

FILL_PREFIX = "fill-"


class ReadThrough:
    def __init__(self, store: Store, remotes: dict[str, Remote], task_group: TaskGroup) -> None:
        self.store = store
        self.remotes = remotes
        self.task_group = task_group  # fills outlive the request that started them
        self.stall = store.settings.cache.fill_timeout
        self._fills: dict[str, Fill] = {}

    async def open(self, record: FileRecord, final: int) -> FillBytes:
        """A reader of `record`'s bytes, up to the response's `final` byte, once the download
        has delivered its first block; raises the download's error if it failed before that
        (so the client gets a status, not a broken body)."""
        fill = self._fills.get(record.path)
        if fill is None or fill.record.version != record.version or fill.error is not None:
            fill = self._start(record)
        reader = FillBytes(fill, final)
        try:
            while fill.written == 0 and not fill.finished:
                await fill.changed()
            if fill.error is not None and fill.written == 0:
                raise fill.error
        except BaseException:  # the error, or a client that left while it waited
            reader.close()
            raise
        return reader

    def _start(self, record: FileRecord) -> Fill:
        remote = self.remotes.get(record.remote or DEFAULT_REMOTE)
        if remote is None:
            raise RemoteError(f"{record.path!r} is in the remote {record.remote!r}, "
                              "which is not configured")
        tmp = self.store.local.tmp_dir / f"{FILL_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fill = Fill(record, tmp, fd)
        self._fills[record.path] = fill
        self.task_group.start_soon(self._run, fill, remote)
        return fill

    async def _run(self, fill: Fill, remote: Remote) -> None:
        try:
            await fill.run(remote, self._install, self.stall)
        finally:
            if self._fills.get(fill.record.path) is fill:
                del self._fills[fill.record.path]
            # Only now: until the fill left the dict, a new reader could still open the name.
            fill.tmp.unlink(missing_ok=True)

    def _install(self, fill: Fill) -> None:
        """Rename a verified fill into the cache area, if it still is the current version and
        no bytes arrived meanwhile; else drop it. In a worker thread."""
        registry, local = self.store.registry, self.store.local
        path = fill.record.path
        with registry.transaction() as conn:
            current = registry.get(path, conn)
            has_bytes = any(p.exists() for p in local.candidates(path))
            if current is None or current.version != fill.record.version or has_bytes:
                return
            target = local.cached_path_of(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(fill.tmp, target)  # a second name: the temp one stays for joining readers
            fsync_dir(target.parent)
            registry.set_inode(conn, path, os.stat(target).st_ino)
