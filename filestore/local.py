"""The local store: file bytes below `data_dir/files`, written atomically.

A write streams into a temp file in `data_dir/tmp` (same filesystem, so the final step is a rename),
hashing as it goes; then fsync, rename over the final name and fsync the directory. A reader
therefore sees the old file or the new one whole, never a torn one, and an acknowledged file
survives a crash. The disk work for each 1 MiB of body is one thread call (write + hash together).

Small files just read are kept open for the next GETs (`kept.KeptFiles`, one table per store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio

from .errors import BadPath, Conflict, InsufficientStorage, InUse, TooLarge
from .fsutil import fsync_dir, prune_empty_dirs
from .kept import KeptFiles
from .paths import resolve_below
from .registry import FileRecord

if TYPE_CHECKING:
    from .config import Settings
    from .static import StaticTree

CHUNK_SIZE = 1024 * 1024
# When a body's next block would cross `min_free`, the cache is asked for room for the rest of
# the declared body too, up to this much: one eviction per 64 MiB received, not one per block.
ROOM_AHEAD = 64 * CHUNK_SIZE

# Makes `free` bytes free on the data directory's disk if it can (the cache evicts); in a
# worker thread.
MakeRoom = Callable[[int], object]
TEMP_PREFIX = "put-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REPLICA_NAME = re.compile(r"([0-9a-f]{64})-([0-9a-f]{64})")


def mark_in_use(fd: int) -> bool:
    """Take a shared lock on a cache file's open fd for as long as it stays open: eviction
    (`drop_cached`, an exclusive try-lock) then leaves the file alone, in every process. False
    if an eviction holds the file right now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Received:
    """A fully received body, waiting in a temp file to be installed or discarded."""

    tmp: Path
    size: int
    sha256: str
    md5: str


# Free disk no body may take, whatever storage.min_free says: the registry's commits (WAL pages)
# must always find room, or a PUT's bytes land without their record and DELETEs fail.
REGISTRY_HEADROOM = 4 * 1024 * 1024


class _TempWriter:
    """Sync half of a streaming write: runs in a worker thread, one call per 1 MiB."""

    def __init__(self, tmp: Path, min_free: int, make_room: MakeRoom | None = None,
                 expected: int = 0) -> None:
        self.tmp = tmp
        self.min_free = max(min_free, REGISTRY_HEADROOM)
        self.make_room = make_room
        self.expected = expected  # the declared length (0: not declared)
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            if self._free() < self.min_free + len(data) and self.make_room is not None:
                # Room is made for bytes that arrived, and a little ahead of them: never for
                # a length a client only declared.
                ahead = min(max(self.expected - self.size - len(data), 0), ROOM_AHEAD)
                self.make_room(self.min_free + len(data) + ahead)
            if self._free() < self.min_free + len(data):
                raise InsufficientStorage("the data directory's disk is below storage.min_free")
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage("the data directory's disk is full") from None
            raise
        self.sha256.update(data)
        self.md5.update(data)
        self.size += len(data)

    def _free(self) -> int:
        disk = os.fstatvfs(self.fd)
        return disk.f_bavail * disk.f_frsize

    def finish(self, sync: bool = True) -> None:
        try:
            if sync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)

    def abort(self) -> None:
        os.close(self.fd)
        self.tmp.unlink(missing_ok=True)


class LocalStore:
    """`files/`: bytes not yet uploaded (or kept, in backup mode). `cache/`: bytes of uploaded
    files, handed over by rename after a verified upload; the cache may evict them."""

    def __init__(self, data_dir: Path, *, min_free: int = 0, keep_open: bool = True,
                 static: StaticTree | None = None) -> None:
        self.root = (data_dir / "files").resolve()
        self.cache_root = (data_dir / "cache").resolve()
        self.tmp_dir = (data_dir / "tmp").resolve()
        # Copies of other nodes' files not uploaded yet (cluster/replicas.py).
        self.replica_root = (data_dir / "replicas").resolve()
        self.min_free = max(min_free, REGISTRY_HEADROOM)
        for directory in (self.root, self.cache_root, self.tmp_dir, self.replica_root):
            directory.mkdir(parents=True, exist_ok=True)
        self._root_str = str(self.root) + os.sep
        self._cache_str = str(self.cache_root) + os.sep
        self.kept = KeptFiles(enabled=keep_open)
        # nginx's links to current versions (`server.static_hits`, static.py): every change of
        # a path's bytes here unlinks its link first.
        self.static = static

    def drop_static(self, path: str) -> None:
        if self.static is not None:
            self.static.drop(path)

    def link_static(self, settings: Settings, record: FileRecord, source: Path) -> None:
        """Let nginx answer this version's hits, if it answers them as filestore does; in the
        write transaction that read `record` (static.py)."""
        if self.static is not None:
            self.static.link(settings, record, source)

    def path_of(self, path: str) -> Path:
        """The local file for a normalised path; symlinks may not lead outside the store."""
        return resolve_below(self.root, path)

    def cached_path_of(self, path: str) -> Path:
        return resolve_below(self.cache_root, path)

    def replica_path_of(self, path: str, sha256: str) -> Path:
        """Where this node keeps its copy of another node's `path` with these bytes:
        `replicas/<sha256 of the path>-<sha256 of the bytes>`. Fixed-length names (a path's
        segment may be as long as a name can be), and named by the bytes (checked when they
        arrived), so the name alone says which bytes they are and a newer version's copy
        never replaces an older one still in use. One directory for all: a new copy costs
        one directory fsync, not a directory of its own and two."""
        return self.replica_root / f"{hashlib.sha256(path.encode()).hexdigest()}-{sha256}"

    def _replica_paths(self, path: str, sha256: str) -> tuple[Path, Path]:
        """The copy's name, then the one earlier versions gave it
        (`replicas/<path hash>/<bytes hash>`), which is still read and swept."""
        final = self.replica_path_of(path, sha256)
        return final, self.replica_root / hashlib.sha256(path.encode()).hexdigest() / sha256

    def open_replica(self, path: str, sha256: str) -> int | None:
        for where in self._replica_paths(path, sha256):
            try:
                return os.open(where, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
        return None

    def install_replica(self, tmp: Path, path: str, sha256: str) -> None:
        """Rename a received, fsync'd and checked copy into place, durably."""
        os.replace(tmp, self.replica_path_of(path, sha256))
        fsync_dir(self.replica_root)

    def replica_copies(self) -> Iterator[tuple[str, str, Path]]:
        """Every copy kept here: (sha256 of its path, sha256 of its bytes, where)."""
        for entry in os.scandir(self.replica_root):
            named = _REPLICA_NAME.fullmatch(entry.name)
            if named and entry.is_file(follow_symlinks=False):
                yield named[1], named[2], Path(entry.path)
            elif entry.is_dir(follow_symlinks=False) and _HEX64.fullmatch(entry.name):
                for copy in os.scandir(entry.path):  # the earlier layout
                    if _HEX64.fullmatch(copy.name):
                        yield entry.name, copy.name, Path(copy.path)

    def drop_replica(self, copy: Path, written_before: float) -> bool:
        """Unlink a copy nobody wrote since `written_before`; whether it went. A copy of the
        same bytes installed meanwhile (the same name: the same bytes) is put back."""
        trash = self.tmp_dir / f"replica-{uuid.uuid4().hex}"
        try:
            os.rename(copy, trash)
        except FileNotFoundError:
            return False
        fresh = trash.stat().st_mtime >= written_before
        if fresh:
            with contextlib.suppress(FileExistsError):
                os.link(trash, copy)
        trash.unlink()
        if not fresh and copy.parent != self.replica_root:
            with contextlib.suppress(OSError):
                copy.parent.rmdir()  # the path's last copy in the earlier layout
        return not fresh

    def candidates(self, path: str) -> tuple[Path, Path]:
        """Where a file's bytes may be, in the order to look: kept local, then cached."""
        return self.path_of(path), self.cached_path_of(path)

    def open_bytes(self, path: str, *, local: bool = True) -> tuple[int, bool] | None:
        """An fd of `path`'s bytes (local, else cached) and whether they are the cache's, or
        None. The hot read path: it opens first and then asks the kernel where the fd really
        is, one readlink instead of the lstat per component that resolving the path beforehand
        would cost. A cached fd holds a shared lock while open, so eviction passes it by.
        `local=False`: the cache area only (another node holds the file's local bytes, so any
        in files/ here are an older version's, on their way out)."""
        for root in (self._root_str, self._cache_str) if local else (self._cache_str,):
            try:
                fd = os.open(root + path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # no /proc: resolve the slow way
                real = os.path.realpath(root + path)
            if not real.startswith(root):
                os.close(fd)
                raise BadPath("the path leads outside the data directory")
            cached = root == self._cache_str
            if cached and not mark_in_use(fd):
                os.close(fd)  # being evicted this very moment: read it from the cloud
                return None
            return fd, cached
        return None

    def opened_at(self, path: str, cached: bool) -> str:
        """The name `open_bytes` opened `path`'s bytes at (`cached`: in the cache area)."""
        return (self._cache_str if cached else self._root_str) + path

    def open_version(self, path: str, record: FileRecord | None, version: int, *,
                     replica: bool = False) -> BinaryIO | None:
        """The local bytes of `version` of `path` for uploading, or None if it is gone.
        `replica`: this node keeps a copy for the holder (cluster.replicas), read from there
        only: files/ and cache/ here may hold an older version's bytes on their way out."""
        if record is None or record.version != version:
            return None
        where = self._replica_paths(path, record.sha256) if replica else self.candidates(path)
        for candidate in where:
            try:
                return open(candidate, "rb")  # the caller closes it
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
        return None

    def move_to_cache(self, path: str) -> bool:
        """Hand an uploaded file's bytes to the cache area by rename (same inode, no copy);
        whether the cache area holds them now. Inside a write transaction, so no install of
        the path can interleave."""
        source = self.path_of(path)
        target = self.cached_path_of(path)
        if not source.exists():
            return target.is_file()  # moved already
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        prune_empty_dirs(source.parent, self.root)
        return True

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_room(self, incoming: int, reclaimable: int = 0) -> None:
        """Refuse before writing when `incoming` more bytes would cross `storage.min_free`, even
        with `reclaimable` bytes (the cache's) given back."""
        if self.free_bytes() + reclaimable < self.min_free + incoming:
            raise InsufficientStorage(
                f"not enough free disk: {incoming} bytes would leave less than "
                f"storage.min_free ({self.min_free} bytes)"
            )

    async def receive(self, chunks: AsyncIterator[bytes], max_size: int,
                      make_room: MakeRoom | None = None, expected: int = 0, *,
                      sync: bool = True) -> Received:
        """Stream `chunks` into a new temp file, hashing; delete it again on any failure.
        `make_room` is asked for room when a block would cross `min_free` (`expected`: the
        declared length, if any). `sync=False`: not fsync'd yet, the caller does
        (`sync_received`) before it installs the file.

        Network chunks are gathered into 1 MiB blocks so the thread hop is paid per MiB.
        """
        tmp = self.tmp_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        writer = await anyio.to_thread.run_sync(_TempWriter, tmp, self.min_free, make_room,
                                                expected)
        buffer = bytearray()
        try:
            async for chunk in chunks:
                if writer.size + len(buffer) + len(chunk) > max_size:
                    raise TooLarge(f"the body is larger than storage.max_upload_size ({max_size})")
                buffer += chunk
                if len(buffer) >= CHUNK_SIZE:
                    block, buffer = bytes(buffer), bytearray()
                    await anyio.to_thread.run_sync(writer.write, block)
            if buffer:
                await anyio.to_thread.run_sync(writer.write, bytes(buffer))
            await anyio.to_thread.run_sync(writer.finish, sync)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(writer.abort)
            raise
        return Received(tmp, writer.size, writer.sha256.hexdigest(), writer.md5.hexdigest())

    def copy_in(self, source: Path, max_size: int) -> Received:
        """Copy a local file into a new temp file, hashing, like `receive` but in the calling
        thread (for `filestore import`); the temp file goes again on any failure."""
        tmp = self.tmp_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        writer = _TempWriter(tmp, self.min_free)
        try:
            with open(source, "rb") as f:
                while block := f.read(CHUNK_SIZE):
                    if writer.size + len(block) > max_size:
                        raise TooLarge(f"larger than storage.max_upload_size ({max_size})")
                    writer.write(block)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        return Received(tmp, writer.size, writer.sha256.hexdigest(), writer.md5.hexdigest())

    @staticmethod
    def sync_received(received: Received) -> None:
        """fsync a body `receive` left unsynced."""
        fd = os.open(received.tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self, received: Received) -> None:
        received.tmp.unlink(missing_ok=True)

    def install(self, tmp: Path, path: str) -> None:
        """Rename a finished temp file over `path`, durably. Call inside the registry's write
        transaction, so that concurrent installs and removals of one path are serialised."""
        final = self.path_of(path)
        # Directories created here must be durable too, not only the file's own entry.
        created = [d for d in final.parents if d != self.root and self.root in d.parents
                   and not d.exists()]
        self.drop_static(path)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except (NotADirectoryError, FileExistsError):
            raise Conflict(f"a parent of {path!r} is a file, so it cannot be a directory") from None
        except IsADirectoryError:
            raise Conflict(f"{path!r} is a directory of other files") from None
        for directory in [final.parent, *(d.parent for d in created)]:
            fsync_dir(directory)
        # The replaced version's bytes may sit in the cache area (it was uploaded): they are
        # stale now, and reads look in files/ first anyway.
        cached = self.cached_path_of(path)
        if cached.is_file():
            cached.unlink()
            prune_empty_dirs(cached.parent, self.cache_root)

    def install_cached(self, fill: Path, path: str) -> tuple[Path, int]:
        """Put a verified cache fill in place as `path`'s cached bytes: where, and their inode.
        A second name (the temp one stays for joining readers), put in place by rename: it
        replaces an older version's bytes a shared registry's sweeper has yet to drop. Inside
        the write transaction that indexes it; durable once the caller fsyncs the directory."""
        target = self.cached_path_of(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        linked = fill.with_name(fill.name + ".link")
        linked.unlink(missing_ok=True)
        os.link(fill, linked)
        self.drop_static(path)  # an older version's link
        os.replace(linked, target)
        return target, os.stat(target).st_ino

    def drop_cached(self, path: str) -> bool:
        """Unlink `path`'s bytes in the cache area, unless a reader has them open (`InUse`).
        True if there were bytes. Inside a write transaction, with the index row."""
        cached = self.cached_path_of(path)
        try:
            fd = os.open(cached, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InUse(f"{path!r} is being read from the cache") from None
            self.drop_static(path)
            cached.unlink()
        finally:
            os.close(fd)
        prune_empty_dirs(cached.parent, self.cache_root)
        return True

    def remove_local(self, path: str) -> None:
        """Unlink `path`'s local bytes (files/, not the cache area's copy). Inside the write
        transaction."""
        final = self.path_of(path)
        self.drop_static(path)
        final.unlink(missing_ok=True)
        prune_empty_dirs(final.parent, self.root)

    def remove(self, path: str) -> None:
        """Unlink `path`'s bytes (local and cached) and the directories that leaves empty.
        Inside the write transaction."""
        self.drop_static(path)
        for root, final in zip((self.root, self.cache_root), self.candidates(path), strict=True):
            final.unlink(missing_ok=True)
            prune_empty_dirs(final.parent, root)

    def temp_files(self) -> list[Path]:
        """Everything in tmp/: bodies being received, cache fills in progress."""
        return sorted(self.tmp_dir.iterdir())
