"""One download of one remote object into a file that readers follow while it grows.

The process that holds the object's fill lock (`lock.py`) runs a `Fill`: it hands the download in
1 MiB blocks to a worker thread it keeps for the whole download (`_Storer`), which writes each
block to `tmp/fill-<key>` and hashes it, and announces every block to the readers as it is
handed over. Other processes serving the same object follow that file with a `ForeignFill`,
which watches its size grow instead of being told. Readers (`FillBytes`) read what has arrived
and wait for the rest. A reader right behind the download takes its bytes from memory: the fill
keeps every block until it is written, and the last `_KEPT_BLOCKS` written ones (reading them
back would cost a zeroed buffer and a copy of every byte, and waiting for the write a thread
round trip); one further behind reads the file. A response that ends with the object's last
byte gets it only once the whole body is in the file and its SHA-256 matched the registry, so a
corrupt download never ends cleanly: its readers fail mid-body instead. A verified fill is
installed into the cache area by its `install` callback (another name for the same inode, once
the file is fsynced); the temp name is removed either way. A fill downloads at the node's
`cache.download_bandwidth`: its `pace` callback waits after each chunk arrives, before the next
is asked for (see bandwidth.py). A download that gets nothing from the store for
`cache.fill_timeout` fails (one watchdog timer per fill).

Everything here runs on the event loop's thread, except the storer's writing and hashing (a
small fill's run there too: `_InlineStorer`); `written`, `verified` and `error` change only on
the loop, so readers check them without locks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import os
import queue
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio

from .. import logs
from ..errors import FilestoreError, RemoteError, RemoteIntegrityError, RemoteUnavailable
from ..local import mark_in_use
from ..registry import FileRecord
from ..remote import Readable
from ..responses import CHUNK_SIZE, pread
from .lock import FillLock, held_elsewhere

log = logging.getLogger("filestore.cache")

# Blocks the download may run ahead of the storer: overlap, with memory bounded to a few MiB.
# (More measured no faster with bench/miss.py: the storer then only falls further behind while
# the download takes the cores, and the last byte waits for it.)
_BLOCKS_AHEAD = 2
# A fill of at most this many bytes writes and hashes on the event loop's thread (see
# `_InlineStorer`).
_INLINE_MAX = 64 * 1024
# Blocks a fill keeps in memory after writing them, for the readers right behind it.
_KEPT_BLOCKS = 2
# Chunks in one block at most: one writev takes up to IOV_MAX (1024 on Linux) buffers.
_MAX_PARTS = 512
# How often a follower in another process looks at the fill's file. Reading the size is one
# fstat, so a short interval costs little and keeps those clients close behind.
_FOLLOW_INTERVAL = 0.005

# Waits until this many more bytes may be downloaded (the download cap); what a fill needs of
# bandwidth.py.
Pace = Callable[[int], Awaitable[None]]


class Filling:
    """What readers see of a fill, wherever it runs: the bytes so far, and the outcome."""

    def __init__(self, record: FileRecord, tmp: Path) -> None:
        self.record = record
        self.tmp = tmp
        # Bytes readers may have: in the file, or (a `Fill` here) still in memory.
        self.written = 0
        self.verified = False
        self.error: FilestoreError | None = None
        self._progress = anyio.Event()

    @property
    def finished(self) -> bool:
        return self.verified or self.error is not None

    async def changed(self) -> None:
        """Until the next block lands, or the fill ends (check state first, then wait)."""
        await self._progress.wait()

    def _announce(self) -> None:
        event, self._progress = self._progress, anyio.Event()
        event.set()

    def open_reader(self) -> int:
        """A new fd of the fill's file, for one reader."""
        raise NotImplementedError

    def recent(self, offset: int, length: int) -> memoryview | None:
        """Up to `length` bytes at `offset` from the blocks still in memory (no read of the
        file); None when they are not."""
        return None


class Fill(Filling):
    """A download this process runs, holding the entry's fill lock."""

    def __init__(self, record: FileRecord, tmp: Path, fd: int, lock: FillLock) -> None:
        super().__init__(record, tmp)
        self.lock = lock
        self._fd = fd  # the fill's own write fd
        # The chunks handed to the storer and not yet written, those of the last `_KEPT_BLOCKS`
        # blocks written, and the offset of each: readers that keep up with the download take
        # their bytes from here, not from the file. (`written` counts the bytes handed over:
        # what is not in memory any more is in the file.)
        self._kept: list[bytes] = []
        self._kept_at: list[int] = []
        self._kept_blocks: list[int] = []  # chunks per kept block, oldest first
        self._kept_stored = 0  # how many of the kept blocks are written
        self.stored = 0  # bytes written to the file
        # Since when the download waits for the remote's next chunk (None: it does not now,
        # it is handing a block on or pacing), for the stall watchdog.
        self.waiting_since: float | None = None

    def open_reader(self) -> int:
        # The name exists for as long as the fill is registered as running (see readthrough).
        return os.open(self.tmp, os.O_RDONLY | os.O_CLOEXEC)

    def recent(self, offset: int, length: int) -> memoryview | None:
        at = self._kept_at
        if not at or offset < at[0]:
            return None
        index = bisect.bisect_right(at, offset) - 1
        start = offset - at[index]
        chunk = self._kept[index]
        if start >= len(chunk):
            return None  # beyond what has arrived
        return memoryview(chunk)[start:start + length]

    def _arrived(self, block: list[bytes]) -> None:
        """A block handed to the storer: the readers may have it now, from memory (on the
        loop's thread). The chunks are the remote's `bytes`, never changed after: holding on to
        them is safe."""
        offset = self.written
        for chunk in block:
            self._kept.append(chunk)
            self._kept_at.append(offset)
            offset += len(chunk)
        self._kept_blocks.append(len(block))
        self.written = offset
        self._announce()

    def _stored_block(self, size: int) -> None:
        """The storer wrote the oldest block not yet written (on the loop's thread): forget
        the oldest kept block once more than `_KEPT_BLOCKS` are in the file."""
        self.stored += size
        self._kept_stored += 1
        if self._kept_stored > _KEPT_BLOCKS:
            drop = self._kept_blocks.pop(0)
            del self._kept[:drop], self._kept_at[:drop]
            self._kept_stored -= 1

    async def run(self, remote: Readable, install: Callable[[Fill], None], stall: float,
                  pace: Pace | None = None) -> None:
        """Download, verify, install. Never raises: the outcome is in `verified` / `error`.

        Downloading, writing and hashing overlap: the download hands blocks of about 1 MiB (the
        store's chunks as they came, never joined: no copy) to the storer, at most
        `_BLOCKS_AHEAD` ahead of it (so memory stays bounded), and the readers take them from
        memory meanwhile: they never wait for the disk or the hash, except for the last byte.
        The storer writes and hashes in one worker thread for the whole download, so a block
        costs the loop a queue put and one call back, not a worker-thread round trip per stage
        (about 50 µs of the loop's CPU each with anyio's `to_thread`); a small fill's storer
        writes and hashes on the loop (`_InlineStorer`)."""
        digest = hashlib.sha256()
        try:
            storer = (_InlineStorer if self.record.size <= _INLINE_MAX else _Storer)(
                self._fd, digest, self._stored_block)
            # Ends only once the storer is done with the fd (closed below), even when
            # cancelled; a storer that fails (a full disk) cancels the download.
            async with storer.running():
                await self._watched_download(remote, storer, pace, stall)
            if self.stored != self.record.size or digest.hexdigest() != self.record.sha256:
                raise RemoteIntegrityError(
                    f"the remote copy of {self.record.path!r} is not the recorded file "
                    f"({self.written} bytes, sha256 {digest.hexdigest()}; recorded "
                    f"{self.record.size} bytes, {self.record.sha256})"
                )
            # The body is verified: readers may have their last bytes now. Making the entry
            # durable and installing it only decides whether it is kept.
            self.verified = True
            self._announce()
            await anyio.to_thread.run_sync(os.fsync, self._fd)
            await anyio.to_thread.run_sync(install, self)
        except Exception as exc:
            if not self.verified:
                error: BaseException = exc
                while isinstance(error, ExceptionGroup):  # the storer's
                    error = error.exceptions[0]
                self.error = error if isinstance(error, FilestoreError) else RemoteError(
                    f"the download of {self.record.path!r} failed: "
                    f"{type(error).__name__}: {error}")
                if isinstance(self.error, RemoteIntegrityError):
                    logs.event(log, "cache.integrity_failure", "the download of {path!r} is "
                               "not the recorded file, nothing was cached: {error}",
                               level=logging.ERROR, path=self.record.path,
                               size=self.record.size, received=self.written,
                               error=self.error.detail)
                else:
                    logs.event(log, "cache.fill_failed", "cache fill of {path!r} failed: "
                               "{error}", level=logging.WARNING, path=self.record.path,
                               error=self.error.detail)
            else:
                logs.event(log, "cache.fill_not_kept", "a verified cache fill of {path!r} "
                           "could not be kept: {error}", level=logging.WARNING,
                           path=self.record.path, error=str(exc))
        finally:
            if not self.finished:  # cancelled (the server stops): its readers must not wait
                self.error = RemoteError(f"the download of {self.record.path!r} was stopped")
            os.close(self._fd)
            if self.verified:  # all in the file now; readers of a failed fill fail at `written`
                self._kept, self._kept_at, self._kept_blocks = [], [], []
            self._announce()

    async def _download(self, remote: Readable, storer: _Storer, pace: Pace | None) -> None:
        chunks = remote.get(self.record.path).__aiter__()
        block: list[bytes] = []
        size = 0
        first = True
        while True:
            self.waiting_since = time.monotonic()
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            finally:
                self.waiting_since = None
            block.append(chunk)
            size += len(chunk)
            if self.written + size > self.record.size:  # fail now, not after all of it
                raise RemoteIntegrityError(
                    f"the remote copy of {self.record.path!r} is larger than the recorded "
                    f"{self.record.size} bytes")
            # 1 MiB blocks, except the first: it goes at once, so the first byte reaches the
            # clients as soon as the store sends it.
            if size >= CHUNK_SIZE or first or len(block) == _MAX_PARTS:
                self._arrived(block)
                await storer.put(block)
                if first and self.written < self.record.size:
                    # The readers send it now: while the connection has more buffered,
                    # reading it never yields to the loop, and the first byte waited 0.5-3.5 ms
                    # for a pause in the download (32 MiB from another node). Later blocks
                    # need no such turn: the clients have their first bytes. (A body of one
                    # block waits for its check instead: its last byte is held until then.)
                    await anyio.lowlevel.checkpoint()
                block, size, first = [], 0, False
            # After the chunk is on its way to the readers, before the next is read: the cap
            # delays the download, never bytes already here. (No stall is counted meanwhile.)
            if pace is not None:  # a download cap (cache.download_bandwidth)
                await pace(len(chunk))
        if block:
            self._arrived(block)
            await storer.put(block)

    async def _watched_download(self, remote: Readable, storer: _Storer, pace: Pace | None,
                                stall: float) -> None:
        """`_download`, failed when the remote sent nothing for `stall` seconds."""
        with anyio.CancelScope() as scope:
            timer = _StallTimer(self, stall, scope)
            try:
                await self._download(remote, storer, pace)
            finally:
                timer.stop()
        if scope.cancelled_caught:
            raise RemoteUnavailable(
                f"the download of {self.record.path!r} stalled for {stall:.0f}s")


class _StallTimer:
    """Cancels a download's scope once it has waited `stall` seconds for the remote's next
    chunk. One timer on the loop for the whole download, looking again at each deadline: a
    deadline per chunk (`anyio.fail_after` around each read) cost about 9 µs a chunk, and a
    watchdog task about 0.2 ms per fill to end (its task group's exit after the download), a
    twentieth of a small file's read from another node."""

    def __init__(self, fill: Fill, stall: float, scope: anyio.CancelScope) -> None:
        self._fill = fill
        self._stall = stall
        self._scope = scope
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(stall, self._check)

    def _check(self) -> None:
        since = self._fill.waiting_since
        if since is None:  # handing a block on, or pacing: no wait for the remote to time
            self._timer = self._loop.call_later(max(self._stall / 4, 0.01), self._check)
            return
        left = since + self._stall - time.monotonic()
        if left <= 0:
            self._scope.cancel()
        else:
            self._timer = self._loop.call_later(left, self._check)

    def stop(self) -> None:
        self._timer.cancel()


class _Storer:
    """Writes a fill's blocks to its file and hashes them, in order, in one worker thread for
    the whole download. The loop hands a block over with `put`, which waits while
    `_BLOCKS_AHEAD` are pending, and hears of each written block through `stored` (called on
    the loop). Writing and hashing a block in one go, in one thread, costs each block one
    wake-up of the thread and one of the loop."""

    def __init__(self, fd: int, digest: hashlib._Hash, stored: Callable[[int], None]) -> None:
        self._fd = fd
        self._digest = digest
        self._stored = stored
        self._loop = asyncio.get_running_loop()
        self._blocks: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._pending = 0  # blocks put and not yet written (on the loop's thread)
        self._room = anyio.Event()  # set when a block is written
        self._drop = False  # the thread skips what is left (a failed download)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The thread, writing what is put while the body runs; on the way out it writes what
        is left, or drops it if the body failed, and the exit waits until the thread is done
        with the fd. A failure of the thread (a full disk) cancels the body and is raised."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            try:
                yield
            except BaseException:
                self.close(drop=True)  # the blocks not yet written are of no use
                raise
            self.close(drop=False)

    async def _run(self) -> None:
        """A limiter of its own: a fill keeps its thread for as long as it downloads, which must
        not take one of the default limiter's tokens (those are for the registry, the disk)."""
        await anyio.to_thread.run_sync(self._main, limiter=anyio.CapacityLimiter(1))

    async def put(self, block: list[bytes]) -> None:
        while self._pending >= _BLOCKS_AHEAD:
            await self._room.wait()
        self._pending += 1
        self._blocks.put(block)

    def close(self, drop: bool) -> None:
        """No more blocks: the thread writes those pending, or with `drop` skips them."""
        self._drop = drop
        self._blocks.put(None)

    def _main(self) -> None:
        """The thread: write and hash each block and tell the loop, until `close`."""
        while (block := self._blocks.get()) is not None:
            if self._drop:
                continue
            self._loop.call_soon_threadsafe(self._block_done, self._store(block))

    def _store(self, block: list[bytes]) -> int:
        """Write and hash one block; its size."""
        size = _write_block(self._fd, block)
        for chunk in block:  # hashlib lets go of the GIL while it hashes a chunk
            self._digest.update(chunk)
        return size

    def _block_done(self, size: int) -> None:
        self._pending -= 1
        self._stored(size)
        room, self._room = self._room, anyio.Event()
        room.set()


class _InlineStorer(_Storer):
    """A small fill's storer: each block is written and hashed on the loop's thread as it is
    put. For at most `_INLINE_MAX` bytes (a write to the page cache and a hash of tens of µs)
    that costs less than waking the storer's thread and being woken by it, which was a fifth of
    a 1 KiB read from another node (0.7 ms of 3.5, bench/cluster.py)."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield  # no thread: each block was written as it was put

    async def put(self, block: list[bytes]) -> None:
        self._stored(self._store(block))


def _write_block(fd: int, block: list[bytes]) -> int:
    """Write a block's chunks at the end of `fd`: one writev, no joining copy."""
    size = sum(map(len, block))
    written = os.writev(fd, block)
    if written < size:  # a short write (rare: a full disk raises): the rest, joined
        rest = memoryview(b"".join(block))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]
    return size


class ForeignFill(Filling):
    """A download another process runs (it holds the fill lock), followed through its file.

    Its outcome shows in the file system: when the lock is free again, the fill was verified
    if and only if the cache area holds this very inode (the owner links a verified file
    there; a failed or dead owner does not)."""

    def __init__(self, record: FileRecord, tmp: Path, fd: int, lock_path: Path,
                 lock_inode: int, cached: Path) -> None:
        super().__init__(record, tmp)
        self._fd = fd  # read-only, opened while the owner held the lock
        self._lock_path = lock_path
        self._lock_inode = lock_inode  # the owner's lock file, not a later fill's
        self._cached = cached

    def open_reader(self) -> int:
        return os.dup(self._fd)  # the name may go at any moment; the inode stays

    async def run(self, stall: float) -> None:
        """Follow the file until its owner lets go of the lock. Never raises."""
        grew = time.monotonic()
        try:
            while True:
                running = held_elsewhere(self._lock_path, self._lock_inode)
                stat = os.fstat(self._fd)
                if stat.st_size > self.written:
                    self.written, grew = stat.st_size, time.monotonic()
                    self._announce()
                if not running:
                    break
                if time.monotonic() - grew > stall:
                    raise RemoteUnavailable(f"the download of {self.record.path!r} by another "
                                            f"process stalled for {stall:.0f}s")
                await anyio.sleep(_FOLLOW_INTERVAL)
            if self.written == self.record.size and self._installed(stat.st_ino):
                self.verified = True
            else:
                raise RemoteError(f"the download of {self.record.path!r} by another process "
                                  "failed")
        except Exception as exc:
            self.error = exc if isinstance(exc, FilestoreError) else RemoteError(
                f"following the download of {self.record.path!r} failed: "
                f"{type(exc).__name__}: {exc}")
        finally:
            if not self.finished:  # cancelled (the server stops): its readers must not wait
                self.error = RemoteError(f"the download of {self.record.path!r} was stopped")
            os.close(self._fd)
            self._announce()

    def _installed(self, inode: int) -> bool:
        try:
            return os.stat(self._cached).st_ino == inode
        except OSError:
            return False


class FillBytes:
    """A reader of a fill for one response: serves bytes as they land and waits for the rest.
    A response that ends with the object's last byte is held back on that byte until the whole
    download is verified; one that ends earlier (a range) cannot be verified on its own and
    gets its bytes as the store sent them."""

    def __init__(self, fill: Filling, final: int) -> None:
        self.fill = fill
        self.final = final
        self._hold_last = final == fill.record.size - 1
        self.fd = fill.open_reader()
        mark_in_use(self.fd)  # once installed, eviction leaves it alone while this reads

    def available(self) -> int:
        """How many bytes from the start a reader may have now."""
        fill = self.fill
        if fill.verified or not self._hold_last:
            return fill.written
        return min(fill.written, self.final)

    async def read(self, length: int, offset: int) -> bytes | bytearray | memoryview:
        while self.available() <= offset:
            if self.fill.error is not None:
                # Mid-body: the response fails and the server cuts the connection, so the
                # client never sees a clean end of a body that was not verified.
                raise self.fill.error
            await self.fill.changed()
        length = min(length, self.available() - offset)
        kept = self.fill.recent(offset, length)
        return kept if kept is not None else await pread(self.fd, length, offset)

    async def aclose(self) -> None:
        os.close(self.fd)
