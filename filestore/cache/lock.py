"""Which process fills a cache entry: the one holding an exclusive `flock` on its lock file.

Several server processes share one data directory. Each keeps its own single-flight table, and
across processes the fill lock decides: the process that takes it downloads; the others follow
its file (`ForeignFill`). The kernel drops the lock of a process that dies, so a crash never
leaves an entry that nobody may fill.

A lock file is removed by its holder when the fill ends. Removing a lock file is only safe with
the usual check: after taking the lock, the name must still lead to the locked inode; if a holder
removed it meanwhile, the lock was taken on a dead file and the taker tries again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


def fill_name(path: str, version: int) -> str:
    """The stem of an entry's fill files in tmp/: one name per version of a path."""
    digest = hashlib.sha256(f"{version}\0{path}".encode()).hexdigest()[:32]
    return f"fill-{digest}"


class FillLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, path: Path) -> FillLock | None:
        """The lock, or None if another process holds it."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                return cls(path, fd)
            os.close(fd)  # its holder removed it just now: lock the new one

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)  # while still held: see the module docstring
        finally:
            os.close(self._fd)


def held_elsewhere(path: Path, inode: int) -> bool:
    """Whether the fill whose lock file had `inode` still holds it (a probe: it never keeps
    the lock). A lock file of another inode at the same name belongs to a later fill."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's shared lock
    return False
