"""Bandwidth caps: a token bucket per direction, shared by every process of the node.

`upload.bandwidth` caps what the queue's workers send, `cache.download_bandwidth` what cache fills
download: bytes per second, 0 for no cap, read from the settings in force at every step, so a
change saved on the admin page applies within a second (to transfers already running too).

A node may run several worker processes (`server.workers`) on one data directory, and the cap is
the node's: the bucket's state (three numbers per direction) lives in `data_dir/bandwidth.state`,
changed under `flock`, so the processes share the rate and one process alone gets all of it. That
costs a lock, a 24-byte read and a write per chunk paced (microseconds); with no cap, nothing.
The clock is `time.monotonic`, which on Linux is one clock for the whole machine.

The bucket holds up to `BURST_SECONDS` of the rate. A chunk larger than that is let through and
paid for by waiting afterwards (the bucket goes into debt), so chunks of any size pass and over
any stretch longer than a chunk the rate is the cap. Waiting is done in slices of at most
`SLICE_SECONDS`, each asking the rate again: a raised or lifted cap frees waiters at once.

Who waits where:
- uploads: `PacedSource` wraps the local file the worker hands to `remote.put`, and paces the
  reads made in worker threads (aiohttp's body sender, the file remote's copy loop) by blocking
  that thread. Reads on the event loop's own thread are never paced: that is botocore reading a
  body to sign it, which sends nothing, and the loop must never block. What a remote reads past
  the wrapper (S3 multipart parts, read through the file descriptor) is paced after the upload
  (see queue/worker.py).
- cache fills: `await bucket.pace(n)` after each chunk arrives (cache/fill.py): the fill reads
  the body more slowly, and TCP's flow control slows the store down to match.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import anyio

STATE_FILE = "bandwidth.state"
UPLOAD, DOWNLOAD = 0, 1  # the slots of the state file
BURST_SECONDS = 0.25
SLICE_SECONDS = 0.1
# charged: bytes charged ever; allowed: bytes the rate has allowed so far; stamp: when
# `allowed` was last brought up to date (time.monotonic). Waiters wait for a position in
# `charged`, which every process shares.
_STATE = struct.Struct("<ddd")


class TokenBucket:
    """One direction's bucket. `rate()` says the cap now (bytes per second, 0: none); `path`
    is the shared state file (None: state of this object alone, for tests)."""

    def __init__(self, path: Path | None, slot: int, rate: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.slot = slot
        self.rate = rate
        self.clock = clock
        self._fd: int | None = None
        self._memory = _STATE.pack(0.0, 0.0, 0.0)
        # flock is held per open file, which every thread of this process shares: the threads
        # take this lock first.
        self._lock = threading.Lock()

    def charge(self, size: int) -> float | None:
        """Take `size` bytes from the bucket: the position to wait for (see `wait_left`), or
        None when there is no cap."""
        rate = self.rate()
        if rate <= 0 or size <= 0:
            return None
        with self._state(rate) as state:
            state[0] += size
            return state[0]

    def wait_left(self, position: float) -> float:
        """Seconds until the bytes up to `position` may go, at the rate in force now."""
        rate = self.rate()
        if rate <= 0:
            return 0.0
        with self._state(rate) as state:
            return max(0.0, (position - state[1]) / rate)

    async def pace(self, size: int) -> None:
        """Wait until `size` more bytes may go (on the event loop)."""
        position = self.charge(size)
        if position is None:
            return
        while (left := self.wait_left(position)) > 0:
            await anyio.sleep(min(left, SLICE_SECONDS))

    def pace_blocking(self, size: int, stop: threading.Event) -> None:
        """Wait until `size` more bytes may go, blocking this (worker) thread; `stop` ends the
        wait early (the transfer was abandoned)."""
        position = self.charge(size)
        if position is None:
            return
        while (left := self.wait_left(position)) > 0:
            if stop.wait(min(left, SLICE_SECONDS)):
                return

    # -- the shared state ---------------------------------------------------------------------

    def _state(self, rate: int) -> _Locked:
        return _Locked(self, rate)

    def _open(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # Closed with the bucket: it lives as long as the workers or the cache owning it.
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def _read(self, fd: int | None) -> list[float]:
        data = self._memory if fd is None else os.pread(fd, _STATE.size,
                                                         self.slot * _STATE.size)
        if len(data) < _STATE.size:
            return [0.0, 0.0, 0.0]  # a new file: a full bucket (see `_refill`)
        return list(_STATE.unpack(data))

    def _write(self, fd: int | None, state: list[float]) -> None:
        data = _STATE.pack(*state)
        if fd is None:
            self._memory = data
        else:
            os.pwrite(fd, data, self.slot * _STATE.size)

    def _refill(self, state: list[float], rate: int) -> None:
        """Bring `allowed` up to now: `rate` bytes a second since the stamp, never more than a
        full bucket ahead of what was charged."""
        charged, allowed, stamp = state
        now = self.clock()
        room = charged + rate * BURST_SECONDS
        if 0.0 < stamp <= now:
            state[1] = min(room, allowed + (now - stamp) * rate)
        else:  # a new file, or one written before a reboot (another monotonic clock): full
            state[1] = room
        state[2] = now


class _Locked:
    """The bucket's state, read, refilled and locked for one change (a context manager)."""

    def __init__(self, bucket: TokenBucket, rate: int) -> None:
        self.bucket, self.rate = bucket, rate
        self.fd: int | None = None
        self.state: list[float] = []

    def __enter__(self) -> list[float]:
        bucket = self.bucket
        bucket._lock.acquire()
        try:
            self.fd = bucket._open()
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.state = bucket._read(self.fd)
            bucket._refill(self.state, self.rate)
        except BaseException:
            self._release()
            raise
        return self.state

    def __exit__(self, *exc: object) -> None:
        try:
            self.bucket._write(self.fd, self.state)
        finally:
            self._release()

    def _release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.bucket._lock.release()


def node_bucket(data_dir: Path, slot: int, rate: Callable[[], int]) -> TokenBucket:
    """The node's bucket for one direction (`UPLOAD` or `DOWNLOAD`)."""
    return TokenBucket(data_dir / STATE_FILE, slot, rate)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class PacedSource(io.RawIOBase):
    """An upload's local file, read at the upload cap: reads in worker threads wait for the
    bucket after reading (see the module's docstring), reads on the event loop do not.

    `paced` counts the bytes paced, so the worker can pace afterwards what a remote read past
    the wrapper. Closing it ends any wait (an abandoned upload's sender thread stops waiting);
    the file itself is the caller's to close."""

    def __init__(self, raw: BinaryIO, bucket: TokenBucket) -> None:
        super().__init__()
        self._raw = raw
        self._bucket = bucket
        self._stop = threading.Event()
        self.paced = 0

    def as_binary(self) -> BinaryIO:
        return cast(BinaryIO, self)  # what `Remote.put` takes: a readable, seekable file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()  # multipart uploads read parts through it (not paced here)

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._pace(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stop.set()
        super().close()

    def _pace(self, size: int) -> None:
        if size and not _on_event_loop():
            self.paced += size
            self._bucket.pace_blocking(size, self._stop)
