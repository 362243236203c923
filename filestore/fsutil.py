"""Small filesystem steps shared by the local store and the `file://` remote."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_empty_dirs(directory: Path, root: Path) -> None:
    """Remove `directory` and its parents up to (not including) `root` while they are empty."""
    while directory != root:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or already gone): other files live there
        directory = directory.parent


def hash_file(path: os.PathLike[str] | str) -> tuple[int, str]:
    """A file's size and hex SHA-256, read in 1 MiB blocks (call it in a worker thread)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
