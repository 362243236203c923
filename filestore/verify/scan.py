"""What the check reads from the disk and the registry: the rows a page at a time in path order,
each row's bytes in files/ and cache/ stat-ed and hashed (1 MiB blocks) into a `Copy`, a fresh
stat to tell the bytes did not change since, and the names in files/ and cache/ no row describes
(the candidate orphans)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from ..cache.reconcile import _is_utf8, _walk
from ..errors import BadPath
from ..local import CHUNK_SIZE, LocalStore
from ..registry import FileRecord, Tables
from .diagnose import Copy
from .findings import Report

PAGE = 500  # rows a query, orphans a settling round


def key(copy: Copy | None) -> tuple[int, int, int] | None:
    """What tells a file is still the one looked at: (inode, size, mtime)."""
    return None if copy is None else (copy.ino, copy.size, copy.mtime_ns)


def stat_key(file: Path) -> tuple[int, int, int] | None:
    """`key` of what `file` is now (None: no regular file there)."""
    try:
        info = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns) if S_ISREG(info.st_mode) else None


def rows(reader: Tables) -> Iterator[list[FileRecord]]:
    """Every row, a page at a time in path order (memory: one page, however many files)."""
    after = ""
    while page := reader.files.page(after, PAGE):
        yield page
        after = page[-1].path


class Scanner:
    """The local bytes of the data directory, read for the check; every byte hashed is counted
    in the report."""

    def __init__(self, local: LocalStore, report: Report) -> None:
        self.local = local
        self.report = report
        self._buffer = bytearray(CHUNK_SIZE)

    def root(self, area: str) -> Path:
        return self.local.root if area == "files" else self.local.cache_root

    def look(self, row: FileRecord) -> tuple[Copy | None, Copy | None]:
        """The row's bytes in files/ and in cache/ (a `BadPath` for an unsafe link)."""
        return (self.hash(self.local.path_of(row.path), "files", row.size),
                self.hash(self.local.cached_path_of(row.path), "cache", row.size))

    def hash(self, file: Path, area: str, expected: int) -> Copy | None:
        """The file's stat and (at the expected size) SHA-256, in 1 MiB blocks; None if there
        is no regular file."""
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            info = os.fstat(fd)
            if not S_ISREG(info.st_mode):
                return None
            sha256 = None
            if info.st_size == expected:
                digest, view = hashlib.sha256(), memoryview(self._buffer)
                while count := os.readv(fd, [view]):
                    digest.update(view[:count])
                    self.report.hashed += count
                sha256 = digest.hexdigest()
            return Copy(file, area, info.st_ino, info.st_size, info.st_mtime_ns, sha256)
        finally:
            os.close(fd)

    def unchanged(self, path: str, f: Copy | None, c: Copy | None) -> bool:
        """Whether files/ and cache/ still hold what `f` and `c` saw at `path`."""
        try:
            return (stat_key(self.local.path_of(path)) == key(f)
                    and stat_key(self.local.cached_path_of(path)) == key(c))
        except BadPath:
            return False

    def unregistered(self, reader: Tables) -> Iterator[list[tuple[str, str, int]]]:
        """What files/ and cache/ hold that no row describes, as (area, path, size), a batch at a
        time (the size of anything but a regular file is -1)."""
        batch: list[tuple[str, str, int]] = []
        for area in ("files", "cache"):
            for path, size in _walk(self.root(area)):
                if _is_utf8(path) and reader.files.get(path) is not None:
                    continue  # the row's check looked at these bytes
                batch.append((area, path, size))
                if len(batch) >= PAGE:
                    yield batch
                    batch = []
        if batch:
            yield batch
