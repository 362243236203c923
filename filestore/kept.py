"""Small local files kept open between GETs, with the registry row proven to hold their bytes.

A GET of a small file is mostly per-request work: the registry lookup, the open, the check of
where the name leads, the fstat, the close. After a file's first GET its fd stays open here
(one table per `LocalStore`, on the event loop's thread only), and the next GETs find it with
one `stat` of its name; a file of up to KEEP_DATA_MAX is also kept in memory once read whole, so
its GETs make no read at all.

Why it is safe to skip the registry for them: every change of a path's row that changes what a
GET answers also changes which inode the path's name leads to, before or as the change is
acknowledged. A PUT renames a new file over the name (before its commit: a GET in between serves
the old version whole, with its own headers, as the PUT is not answered yet); a DELETE unlinks it
before it answers; an upload moves it from files/ to cache/; an install of newer bytes unlinks
the cache area's copy; an eviction unlinks it. So `find` stats the name: the same inode as the
kept fd (and the same size and mtime, against edits behind filestore's back) means the kept row
is still the one to answer with. Inode numbers are reused, but never while a file is open:
holding the fd is what makes the check sound. Only a row whose inode is the fd's is kept (not
the "restored copy" case of `Store.open_current`), so the check is the one the store's own read
makes, and the fd was opened by `LocalStore.open_bytes`, which checked that the name leads to a
file below the data directory. This holds for every process of one data directory, whatever the
registry but one nodes share: there a change made on one node reaches the bytes it supersedes on
another only when that node's sweeper unlinks them, so nothing is kept (`enabled`).

A cache entry kept here is locked shared (as `local.mark_in_use` locks a reader's fd) only while
a response reads it from disk, so eviction can take it between GETs; one in memory needs no lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource

from .registry import FileRecord
from .responses import LocalBytes, MemoryBytes, pread

# Files up to this size are kept: for them the per-request work is most of a GET, and it is all
# their answer needs (one read).
KEEP_MAX_SIZE = 1024 * 1024
# At most this many bytes of files are kept by a process. A kept file that was deleted (or
# replaced, or evicted) holds its disk space until the next GET of its path or the sweep after
# next, and a file kept in memory (KEEP_DATA_MAX) holds its bytes: this bounds both.
KEEP_MAX_BYTES = 32 * 1024 * 1024
# At most this many files, and never more than an eighth of the process's descriptor limit.
KEEP_MAX_FILES = 1024
# Files up to this size are also kept in memory once a response read them whole: their GETs
# then make no read at all, and a cache entry's no lock either.
KEEP_DATA_MAX = 64 * 1024
# Kept files no GET used between two sweeps this many seconds apart are closed.
KEEP_SWEEP_SECONDS = 1.0


class KeptFile:
    """One local file kept open, with the registry row proven to describe its bytes: `fd` was
    opened at the row's path below the data directory (`open_bytes` checked where it leads) and
    its inode is the row's."""

    __slots__ = ("cached", "data", "dev", "dropped", "fd", "full", "ino", "mtime_ns", "path",
                 "record", "size", "used", "users")

    def __init__(self, path: str, record: FileRecord, fd: int, cached: bool, full: str,
                 stat: os.stat_result) -> None:
        self.path = path
        self.record = record
        self.fd = fd
        self.cached = cached  # the cache area's: hits are counted, readers lock it shared
        self.full = full  # where the row's bytes are: files/<path> or cache/<path>
        self.ino, self.dev = stat.st_ino, stat.st_dev
        self.size, self.mtime_ns = stat.st_size, stat.st_mtime_ns
        self.users = 0  # responses reading it now
        self.used = True  # read since the last sweep
        self.dropped = False  # out of the table: closed when its last reader is done
        # The whole file once a response read it (up to KEEP_DATA_MAX): the bytes of the inode
        # `find` checks, which filestore never writes again (a new version is a new file).
        self.data: bytes | None = None

    def memory(self) -> bytes | None:
        """The whole file, if a response read it into memory already."""
        if self.data is not None:
            self.used = True
        return self.data

    def borrow(self) -> KeptBytes | MemoryBytes | None:
        """A source for one response (its close gives the file back), or None if an eviction
        holds this cache entry right now (then the caller reads the slow way, as for any GET
        that finds its entry being evicted). Bytes in memory need no lock: eviction may unlink
        the file while they are sent, as it may once a response has read them."""
        if self.data is not None:
            self.used = True
            return MemoryBytes(self.data)
        if self.users == 0 and self.cached:
            try:  # the shared lock `local.mark_in_use` takes: eviction passes it by
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
        self.users += 1
        self.used = True
        return KeptBytes(self)

    def give_back(self) -> None:
        self.users -= 1
        if self.users == 0:
            if self.dropped:
                os.close(self.fd)  # the lock, if any, goes with it
            elif self.cached:
                # Unlocked between readers: eviction may take the entry while no GET reads it.
                fcntl.flock(self.fd, fcntl.LOCK_UN)


class KeptBytes(LocalBytes):
    """A kept file's bytes for one response; closing it gives the file back, open."""

    def __init__(self, kept: KeptFile) -> None:
        super().__init__(kept.fd)
        self.kept: KeptFile | None = kept

    async def read(self, length: int, offset: int) -> bytes | bytearray:
        body = await pread(self.fd, length, offset)
        kept = self.kept
        if (kept is not None and offset == 0 and len(body) == kept.size <= KEEP_DATA_MAX
                and kept.data is None):
            kept.data = bytes(body)  # the next responses send these
        return body

    def close(self) -> None:
        kept, self.kept = self.kept, None
        if kept is not None:  # once, however often the response closes it
            kept.give_back()


class KeptFiles:
    """Small local files kept open between GETs, by path (see the module docstring)."""

    def __init__(self, *, enabled: bool = True) -> None:
        # Off for a registry nodes share: a change on another node reaches this node's bytes
        # only when its sweeper unlinks them (cluster/sweeper.py), a second or so after the
        # change was acknowledged, and a kept file must never answer in between.
        self.enabled = enabled
        self._files: dict[str, KeptFile] = {}  # in the order they were kept
        self._bytes = 0  # the sizes of the files in `_files`
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_files = KEEP_MAX_FILES if limit == resource.RLIM_INFINITY else min(
            KEEP_MAX_FILES, limit // 8)

    def holds(self, path: str) -> bool:
        """Whether `path` is kept (a normalized path, so), current or not."""
        return path in self._files

    def find(self, path: str) -> KeptFile | None:
        """The kept file of `path` if its name still leads to the kept inode, else None (a
        stale one is dropped)."""
        kept = self._files.get(path)
        if kept is None:
            return None
        try:
            stat = os.stat(kept.full)
        except OSError:
            self._drop(kept)
            return None
        if (stat.st_ino != kept.ino or stat.st_dev != kept.dev or stat.st_size != kept.size
                or stat.st_mtime_ns != kept.mtime_ns):
            self._drop(kept)
            return None
        return kept

    def keep(self, path: str, record: FileRecord, fd: int, cached: bool, full: str
             ) -> KeptFile | None:
        """Take over `fd`, just opened by `open_bytes` for `record` (whose bytes are in `full`),
        if it is worth keeping and is the row's very inode; None leaves the fd to the caller."""
        if (record.size > KEEP_MAX_SIZE or path in self._files or self._closed
                or not self.enabled):
            return None
        stat = os.fstat(fd)
        if stat.st_ino != record.inode or stat.st_size != record.size:
            return None  # the store's fallback for a restored copy: not proven, not kept
        while len(self._files) >= self.max_files or self._bytes + record.size > KEEP_MAX_BYTES:
            # Full: the file kept longest ago that nothing reads right now makes room.
            oldest = next((k for k in self._files.values() if k.users == 0), None)
            if oldest is None:
                return None
            self._drop(oldest)
        kept = self._files[path] = KeptFile(path, record, fd, cached, full, stat)
        self._bytes += record.size
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(KEEP_SWEEP_SECONDS, self._swept)
        return kept

    def _drop(self, kept: KeptFile) -> None:
        if self._files.get(kept.path) is kept:
            del self._files[kept.path]
            self._bytes -= kept.size
        kept.dropped = True
        if kept.users == 0:
            os.close(kept.fd)

    def _swept(self) -> None:
        """Close what no GET read since the last sweep (the idle ones hold descriptors, and
        a deleted one its disk space); look again later while any are kept."""
        self._sweep = None
        for kept in list(self._files.values()):
            if kept.used:
                kept.used = False
            else:
                self._drop(kept)
        if self._files:
            self._sweep = asyncio.get_running_loop().call_later(KEEP_SWEEP_SECONDS, self._swept)

    def close(self) -> None:
        """Close every kept file (the server is stopping); readers still going finish first."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for kept in list(self._files.values()):
            self._drop(kept)
