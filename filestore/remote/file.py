"""`file:///dir`: the remote protocol on a local directory (the embedded default).

It behaves like a cautious object store: atomic writes (temp file, fsync, rename), verified by
hashing what landed, objects under `{dir}/{path}`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio

from ..errors import RemoteError, RemoteIntegrityError, RemoteNotFound, RemoteUnavailable
from ..fsutil import fsync_dir, prune_empty_dirs
from .base import InFlight, RemoteObject

CHUNK_SIZE = 1024 * 1024
# A temp file nobody wrote for this long belongs to no running upload (see `cleanup`).
_IDLE_TEMP_SECONDS = 600.0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone meanwhile: nothing to remove


class FileRemote:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root.absolute()
        self.display_url = f"file://{self.root}"
        self.scope = ""
        self._tmp = self.root / ".filestore-tmp"

    def key_for(self, path: str) -> str:
        return str(self.root / path)

    async def open(self) -> None:
        try:
            await anyio.to_thread.run_sync(lambda: self._tmp.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise RemoteError(f"{self.display_url}: cannot create it ({exc.strerror})") from None

    async def cleanup(self, in_flight: InFlight | None = None) -> int:
        def clean() -> int:
            leftovers = list(self._tmp.iterdir()) if self._tmp.exists() else []
            if in_flight is not None:
                # Other nodes write here too, under names that say no path: only what nobody
                # wrote for a while is a crashed upload's.
                cutoff = time.time() - _IDLE_TEMP_SECONDS
                leftovers = [p for p in leftovers if _mtime(p) < cutoff]
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
            return len(leftovers)

        return await anyio.to_thread.run_sync(clean)

    async def put(self, path: str, source: BinaryIO, size: int, sha256: str,
                  content_type: str, md5: str | None = None) -> RemoteObject:
        return await anyio.to_thread.run_sync(self._put, path, source, size, sha256)

    def _put(self, path: str, source: BinaryIO, size: int, sha256: str) -> RemoteObject:
        target = self.root / path
        tmp = self._tmp / uuid.uuid4().hex
        digest = hashlib.sha256()
        written = 0
        try:
            with open(tmp, "xb") as out:
                source.seek(0)
                while block := source.read(CHUNK_SIZE):
                    out.write(block)
                    digest.update(block)
                    written += len(block)
                out.flush()
                os.fsync(out.fileno())
            if written != size or digest.hexdigest() != sha256:
                raise RemoteIntegrityError(
                    f"{path!r}: copied {written} bytes with sha256 {digest.hexdigest()}, "
                    f"expected {size} bytes with {sha256}"
                )
            for attempt in range(3):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(tmp, target)
                    break
                except FileNotFoundError:
                    # A delete pruned the empty parent between mkdir and replace: again.
                    if attempt == 2:
                        raise
            fsync_dir(target.parent)
        except OSError as exc:
            # Retryable: a full disk, or a path still held by a file whose remote delete is
            # pending (`a` while `a/b` goes up), clears up; max_attempts bounds the rest.
            raise RemoteUnavailable(
                f"{self.display_url}: writing {path!r}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return RemoteObject(path, size, etag=sha256, sha256=sha256)

    async def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        fd = await anyio.to_thread.run_sync(self._open_object, path)
        try:
            offset = start
            while end is None or offset <= end:
                want = CHUNK_SIZE if end is None else min(CHUNK_SIZE, end + 1 - offset)
                block = await anyio.to_thread.run_sync(os.pread, fd, want, offset)
                if not block:
                    break
                yield block
                offset += len(block)
        finally:
            os.close(fd)

    def _open_object(self, path: str) -> int:
        """An fd of the object at `path`; anything but a regular file is no object."""
        try:
            fd = os.open(self.root / path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise RemoteNotFound(f"{path!r} is not in {self.display_url}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RemoteNotFound(f"{path!r} is not in {self.display_url}")
        return fd

    async def head(self, path: str) -> RemoteObject | None:
        try:
            info = await anyio.to_thread.run_sync(os.stat, self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return RemoteObject(path, info.st_size)

    async def delete(self, path: str) -> None:
        await anyio.to_thread.run_sync(self._delete, path)

    def _delete(self, path: str) -> None:
        target = self.root / path
        try:
            if not stat.S_ISREG(os.lstat(target).st_mode):
                return  # a directory of other objects (or something else): no object here
            target.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return  # deleting a missing object is not an error
        prune_empty_dirs(target.parent, self.root)

    async def list_objects(self, prefix: str = "") -> AsyncIterator[RemoteObject]:
        found = await anyio.to_thread.run_sync(self._walk, prefix)
        for item in found:
            yield item

    def _walk(self, prefix: str) -> list[RemoteObject]:
        items = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root and ".filestore-tmp" in dirnames:
                dirnames.remove(".filestore-tmp")
            for name in filenames:
                full = Path(dirpath) / name
                path = str(full.relative_to(self.root))
                if path.startswith(prefix):
                    items.append(RemoteObject(path, full.stat().st_size))
        return sorted(items, key=lambda item: item.path)

    async def close(self) -> None:
        return None

