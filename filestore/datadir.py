"""The data directory's layout and the locks that let several processes share it.

    data_dir/
      registry.sqlite3   the registry (plus -wal and -shm)
      files/             local file bytes, one file per path
      tmp/               bodies being received; renamed into files/ when complete
      static/files/      hard links nginx answers hits from (`server.static_hits`, static.py)
      hits.log           where nginx logs those hits, for filestore to count (hitlog.py)
      token              the generated API token (mode 0600)
      start.lock         held exclusively while one process opens the directory
      live.lock          held shared by every process using the directory

Opening takes `start.lock`, so migrations and crash recovery never run twice at once. A process
that can take `live.lock` exclusively knows no other process is using the directory, so every
temp file and unfinished change it finds was left by a crash and may be cleaned up; it then keeps
the lock shared, like every other process, until it closes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import ConfigError


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.registry_path = root / "registry.sqlite3"
        self.token_path = root / "token"
        self._live_fd: int | None = None

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"storage.data_dir = {str(self.root)!r}: cannot create it ({exc.strerror})"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigError(f"storage.data_dir = {str(self.root)!r}: not writable")

    def start_lock(self) -> int:
        """Block until this process alone is opening the directory; close the fd to release."""
        fd = os.open(self.root / "start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def join(self) -> bool:
        """Mark this process as live; True if it is the only one (so it may recover crashes)."""
        fd = os.open(self.root / "live.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._live_fd = fd
        return alone

    def leave(self) -> None:
        if self._live_fd is not None:
            os.close(self._live_fd)
            self._live_fd = None
