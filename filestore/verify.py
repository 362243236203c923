"""`filestore verify`: the registry against the bytes it describes, and the repairs that are safe.

What is compared, row by row in path order (a page of rows at a time: a million files cost a page
of memory, and memory grows only with the problems found):

- every byte in files/ and cache/ against the row's size and SHA-256 (1 MiB blocks);
- the row's inode against the bytes reads find first (files/, then cache/);
- the cache index against the cache area;
- with `--remote`, the remote's listing against the uploaded rows, merged in path order as both
  arrive: sizes, and SHA-256 where the store reports one (nothing is downloaded, except to prove
  a cloud copy before a repair relies on it);

then the files/ and cache/ trees, for bytes no row describes.

A server may be running on the same data directory, so the registry changes under the check. A
problem seen outside a transaction is only a suspicion: it is confirmed inside a write transaction
against the current row and fresh stats of the files (every filestore process moves bytes only
inside one, so holding the write lock freezes them), and repaired in that same transaction. A row
that changed meanwhile is looked at again; a remote finding is confirmed with a HEAD first.

What each finding means, and what `--repair` does about it. Nothing is ever deleted that exists
nowhere else: bytes that must leave their place go to `quarantine/<run>/` in the data directory.

- missing: a file not uploaded has no bytes on disk. Repair: the row points at its cloud copy if
  that is proven the same (downloaded and hashed); else no copy is left anywhere, and the row and
  its queued upload are dropped.
- corrupt: bytes in files/ differ from their row (size or SHA-256). Repair: quarantined when a
  good copy exists elsewhere (cache, cloud); the only bytes of a file stay where they are.
- corrupt-cache: bytes in cache/ differ from their row. Repair: quarantined and unindexed; the
  next read downloads the file again.
- cache-entry: an index row without its bytes, or for a file not uploaded (eviction would drop
  its only bytes). Repair: the index row goes, never the bytes.
- cache-unindexed: good cache bytes of an uploaded file the index does not list (never evicted).
  Repair: indexed.
- inode: the row's inode is not its bytes' (a data directory restored from a copy). Repair:
  recorded.
- remote-missing, remote-different: an uploaded file's object is missing, or of another size or
  checksum. Repair: good local bytes go to files/, the row is local again and its upload due
  now; with no good local bytes no copy is left, and the row is dropped.
- orphan, orphan-cache: bytes in files/ (cache/) that no row describes. Repair: adopted as a PUT
  would store them (upload queued); the leftover of an answered DELETE whose remote delete is
  still queued is removed; a name that clashes with registered files is quarantined.
- remote-unknown: an object under the remote's prefix no row knows. Left: verify never deletes a
  remote object.
- unsafe-link, unreadable: a symlink leading outside the data directory; a file that cannot be
  read. Left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import paths
from .cache import index
from .cache.reconcile import _is_utf8, _walk
from .config import Settings
from .datadir import DataDir
from .errors import BadPath, ConfigError, Conflict, RemoteError, RemoteNotFound
from .fsutil import fsync_dir, prune_empty_dirs
from .local import CHUNK_SIZE
from .queue import entries
from .registry import SCHEMA_VERSION
from .remote import Remote, RemoteObject, open_remote
from .stats import size_text
from .store import DEFAULT_REMOTE, Store, guess_content_type

_PAGE = 500  # rows a query, objects a listing call, orphans a settling round
_TRIES = 3  # looks at a row that keeps changing under the check before it is left alone
_REMOTE_KINDS = frozenset({"remote-missing", "remote-different"})
_ORPHAN_KINDS = {"files": "orphan", "cache": "orphan-cache"}


# -- the report ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Finding:
    kind: str  # see the table above
    path: str
    detail: str  # what is wrong
    repair: str | None = None  # what --repair did about it (None: nothing)

    def text(self) -> str:
        line = f"{self.kind}: {self.path}: {self.detail}"
        return line + (f"\n    repaired: {self.repair}" if self.repair else "")


@dataclasses.dataclass
class Report:
    remote: bool = False  # whether the remote was compared
    repair: bool = False
    files: int = 0  # rows checked
    hashed: int = 0  # bytes hashed
    objects: int = 0  # remote objects listed
    kept_objects: int = 0  # unknown objects kept on purpose (upload.delete_delay = "never")
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def repaired(self) -> int:
        return sum(1 for finding in self.findings if finding.repair)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.clean,
            "summary": {"files": self.files, "hashed_bytes": self.hashed, "remote": self.remote,
                        "objects": self.objects if self.remote else None,
                        "kept_objects": self.kept_objects, "problems": len(self.findings),
                        "repaired": self.repaired},
            "findings": [dataclasses.asdict(finding) for finding in self.findings],
        }

    def summary(self) -> str:
        checked = f"verify: {_count(self.files, 'file')} checked ({size_text(self.hashed)} hashed)"
        if self.remote:
            checked += f", {_count(self.objects, 'remote object')}"
        if self.kept_objects:
            checked += (f" ({self.kept_objects:,} no file describes, kept as "
                        "upload.delete_delay = never asks)")
        if self.clean:
            return checked + ": all good"
        outcome = f"{checked}: {_count(len(self.findings), 'problem')}"
        if self.repair:
            return outcome + f", {self.repaired:,} repaired"
        return outcome + "; `filestore verify --repair` fixes what can be fixed safely"


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


# -- what is on the disk -------------------------------------------------------------------------

_ROW_COLUMNS = "path, size, sha256, location, version, inode, remote, remote_key, uploaded_at"


@dataclasses.dataclass(frozen=True)
class _Row:
    """The columns of a `files` row the check needs (more than `FileRecord` carries)."""

    path: str
    size: int
    sha256: str
    location: str
    version: int
    inode: int | None
    remote: str | None
    remote_key: str | None
    uploaded_at: float | None

    @property
    def uploaded(self) -> bool:
        return self.location == "remote"


def _get_row(conn: sqlite3.Connection, path: str) -> _Row | None:
    row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
    return _Row(*row) if row else None


@dataclasses.dataclass(frozen=True)
class _Copy:
    """One file of local bytes as found: enough of its stat to tell it is still the same file,
    and its SHA-256 (None: not hashed, its size already differs from the row's)."""

    file: Path
    area: str  # "files" | "cache"
    ino: int
    size: int
    mtime_ns: int
    sha256: str | None

    def good(self, row: _Row) -> bool:
        return self.size == row.size and self.sha256 == row.sha256

    def damage(self, row: _Row) -> str:
        if self.size != row.size:
            return f"{self.area}/ holds {self.size:,} bytes, the registry records {row.size:,}"
        return (f"the SHA-256 of the bytes in {self.area}/ is {self.sha256}, the registry "
                f"records {row.sha256}")


def _good(copy: _Copy | None, row: _Row) -> bool:
    return copy is not None and copy.good(row)


def _key(copy: _Copy | None) -> tuple[int, int, int] | None:
    return None if copy is None else (copy.ino, copy.size, copy.mtime_ns)


def _stat_key(file: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns) if S_ISREG(info.st_mode) else None


def _shown(name: str) -> str:
    """A name as it can be printed and put in JSON (one that is not UTF-8 shows its escapes)."""
    return name if _is_utf8(name) else os.fsencode(name).decode("utf-8", "backslashreplace")


# -- what the remote holds -----------------------------------------------------------------------

class _Unchecked(enum.Enum):
    TOKEN = 0


UNCHECKED = _Unchecked.TOKEN
# What the remote holds at a row's path: an object, None (nothing), or UNCHECKED (not asked).
Cloud = RemoteObject | None | Literal[_Unchecked.TOKEN]


class RemoteView:
    """The remote for this module's plain, blocking code: every call runs on a blocking
    portal's event loop (the remotes are async; the check is a loop in the CLI's thread)."""

    def __init__(self, portal: BlockingPortal, remote: Remote) -> None:
        self.portal = portal
        self.remote = remote

    def head(self, path: str) -> RemoteObject | None:
        return self.portal.call(self.remote.head, path)

    def digest(self, path: str) -> RemoteObject | None:
        """The object with the SHA-256 of its bytes, downloaded and hashed; None if missing."""
        return self.portal.call(_digest, self.remote, path)

    def objects(self) -> Generator[RemoteObject]:
        """Every object under the prefix, in key order as the store lists them; a page of them
        per call into the portal."""
        listing = aiter(self.remote.list_objects())
        try:
            while batch := self.portal.call(_next_batch, listing, _PAGE):
                yield from batch
        finally:
            aclose = getattr(listing, "aclose", None)
            if aclose is not None:
                self.portal.call(aclose)


async def _next_batch(listing: Any, limit: int) -> list[RemoteObject]:
    batch: list[RemoteObject] = []
    with contextlib.suppress(StopAsyncIteration):
        while len(batch) < limit:
            batch.append(await anext(listing))
    return batch


async def _digest(remote: Remote, path: str) -> RemoteObject | None:
    digest, size = hashlib.sha256(), 0
    try:
        async for block in remote.get(path):
            digest.update(block)
            size += len(block)
    except RemoteNotFound:
        return None
    return RemoteObject(path, size, sha256=digest.hexdigest())


@contextlib.contextmanager
def remote_view(settings: Settings) -> Iterator[RemoteView]:
    """The default remote, opened for the length of the block."""
    remote = open_remote(DEFAULT_REMOTE, settings.remote, settings.data_dir)
    with start_blocking_portal() as portal:
        try:
            try:
                portal.call(remote.open)
            except RemoteError as exc:
                raise ConfigError(f"remote.url: {exc.detail}") from None
            yield RemoteView(portal, remote)
        finally:
            portal.call(remote.close)


class _Listing:
    """The remote's objects, consumed in step with the rows (both in path order). Were a store
    to list out of order, nothing would be reported wrongly: an object met out of step is looked
    up on its own, and a row's missing object is confirmed with a HEAD before it is reported."""

    def __init__(self, objects: Generator[RemoteObject]) -> None:
        self._objects = objects
        self._next = next(objects, None)
        self.count = 0

    def close(self) -> None:
        self._objects.close()  # ends the store's listing now, while its event loop runs

    def pop_before(self, path: str | None) -> RemoteObject | None:
        """The next object whose path sorts before `path` (None: to the end), if any."""
        if self._next is None or (path is not None and self._next.path >= path):
            return None
        return self._pop()

    def pop_at(self, path: str) -> RemoteObject | None:
        return self._pop() if self._next is not None and self._next.path == path else None

    def _pop(self) -> RemoteObject | None:
        found, self._next = self._next, next(self._objects, None)
        self.count += found is not None
        return found


# -- the check -----------------------------------------------------------------------------------

def _diagnose(row: _Row, f: _Copy | None, c: _Copy | None, entry: index.CacheEntry | None,
              cloud: Cloud) -> list[tuple[str, str]]:
    """What is wrong with one row, as (kind, detail) pairs: a pure function of what was seen,
    so the same verdict can be reached again inside the confirming transaction."""
    problems = []
    if f is not None and not f.good(row):
        problems.append(("corrupt", f.damage(row)))
    if c is not None and not c.good(row):
        problems.append(("corrupt-cache", c.damage(row)))
    indexed = entry is not None and entry.version == row.version and entry.size == row.size
    if row.uploaded:
        if entry is not None and c is None:
            problems.append(("cache-entry", "the cache index lists it, but cache/ has no bytes"))
        elif _good(c, row) and not indexed:
            problems.append(("cache-unindexed", "cache/ holds its bytes, but the cache index "
                             "does not list them (they are never evicted)"))
        if cloud is not UNCHECKED:
            if cloud is None:
                problems.append(("remote-missing", "uploaded, but the remote has no object "
                                 "for it"))
            elif cloud.size != row.size:
                problems.append(("remote-different", f"the remote object has {cloud.size:,} "
                                 f"bytes, the registry records {row.size:,}"))
            elif cloud.sha256 is not None and cloud.sha256 != row.sha256:
                problems.append(("remote-different", f"the remote object's SHA-256 is "
                                 f"{cloud.sha256}, the registry records {row.sha256}"))
    else:
        if entry is not None:
            problems.append(("cache-entry", "the cache index lists it, but it is not uploaded "
                             "yet: eviction would drop its only bytes"))
        if f is None and c is None:
            hint = ""
            if row.remote is not None and cloud is UNCHECKED:
                hint = ("; the remote holds a copy of some version of it: `filestore verify "
                        "--remote --repair` checks whether it is this one")
            problems.append(("missing", f"registered ({size_text(row.size)}, not uploaded) but "
                             f"its bytes are in neither files/ nor cache/{hint}"))
    reads = f if f is not None else c  # where reads look first
    if reads is not None and reads.good(row) and reads.ino != row.inode:
        problems.append(("inode", f"the row records inode {row.inode}, its bytes are inode "
                         f"{reads.ino}"))
    return problems


class Verifier:
    def __init__(self, store: Store, *, repair: bool = False, remote: RemoteView | None = None,
                 progress: Callable[[int], None] = lambda rows: None) -> None:
        self.store = store
        self.registry = store.registry
        self.local = store.local
        self.repair = repair
        self.remote = remote
        self.progress = progress
        self.report = Report(remote=remote is not None, repair=repair)
        self.quarantine_dir = (store.datadir.root / "quarantine"
                               / time.strftime("%Y%m%d-%H%M%S"))
        # Remote copies of deleted files are kept on purpose: not a problem to report.
        self._kept_deleted = store.settings.upload.delete_delay is None
        self._buffer = bytearray(CHUNK_SIZE)

    def run(self) -> Report:
        listing = _Listing(self.remote.objects()) if self.remote is not None else None
        try:
            self._rows(listing)
        finally:
            if listing is not None:
                listing.close()
        self._orphans()
        return self.report

    def _rows(self, listing: _Listing | None) -> None:
        """Every row, a page at a time, each with the remote's object at its path."""
        after = ""
        while page := self._page(after):
            for row in page:
                cloud: Cloud = UNCHECKED
                if listing is not None:
                    while (unknown := listing.pop_before(row.path)) is not None:
                        self._check_unknown(unknown)
                    at = listing.pop_at(row.path)
                    if row.remote in (None, DEFAULT_REMOTE):  # other remotes: not this listing
                        cloud = at
                self._check_row(row, cloud)
            self.report.files += len(page)
            self.progress(len(page))
            after = page[-1].path
        if listing is not None:
            while (unknown := listing.pop_before(None)) is not None:
                self._check_unknown(unknown)
            self.report.objects = listing.count

    def _page(self, after: str) -> list[_Row]:
        rows = self.registry.reader.execute(
            f"SELECT {_ROW_COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?",
            (after, _PAGE)).fetchall()
        return [_Row(*row) for row in rows]

    def _found(self, kind: str, path: str, detail: str, repair: str | None = None) -> None:
        self.report.findings.append(Finding(kind, _shown(path), detail, repair))

    # -- one row ---------------------------------------------------------------------------------

    def _check_row(self, row: _Row, cloud: Cloud) -> None:
        for _ in range(_TRIES):
            try:
                f, c = self._look(row)
            except BadPath as exc:
                self._found("unsafe-link", row.path, exc.detail)
                return
            except OSError as exc:
                self._found("unreadable", row.path, str(exc))
                return
            entry = index.get(self.registry.reader, row.path)
            if not _diagnose(row, f, c, entry, cloud):
                return
            cloud = self._confirm_cloud(row, f, c, entry, cloud)
            if not _diagnose(row, f, c, entry, cloud):
                return
            with self.registry.transaction() as conn:
                current = _get_row(conn, row.path)
                if current == row and self._unchanged(row.path, f, c):
                    self._settle(conn, row, f, c, index.get(conn, row.path), cloud)
                    return
            if current is None:
                return  # deleted meanwhile: nothing to check
            row = current  # changed meanwhile (a PUT, an upload, a move): look again
            if self.remote is not None and cloud is not UNCHECKED:
                cloud = self.remote.head(row.path)
        # Still changing after several looks: busy, not damaged; the next run sees it settled.

    def _look(self, row: _Row) -> tuple[_Copy | None, _Copy | None]:
        return (self._hash(self.local.path_of(row.path), "files", row.size),
                self._hash(self.local.cached_path_of(row.path), "cache", row.size))

    def _hash(self, file: Path, area: str, expected: int) -> _Copy | None:
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
            return _Copy(file, area, info.st_ino, info.st_size, info.st_mtime_ns, sha256)
        finally:
            os.close(fd)

    def _confirm_cloud(self, row: _Row, f: _Copy | None, c: _Copy | None,
                       entry: index.CacheEntry | None, cloud: Cloud) -> Cloud:
        """A listing is a moment ago: ask the store again before a remote finding counts. A
        repair that would rely on the cloud copy of a local file proves it first (download and
        hash: the row cannot tell that copy's version from an older one of the same size)."""
        if self.remote is None or cloud is UNCHECKED:
            return cloud
        if {kind for kind, _ in _diagnose(row, f, c, entry, cloud)} & _REMOTE_KINDS:
            return self.remote.head(row.path)
        local_bad = not _good(f if f is not None else c, row)
        if (self.repair and not row.uploaded and local_bad and cloud is not None
                and cloud.size == row.size and row.remote == DEFAULT_REMOTE):
            return self.remote.digest(row.path)
        return cloud

    def _unchanged(self, path: str, f: _Copy | None, c: _Copy | None) -> bool:
        try:
            return (_stat_key(self.local.path_of(path)) == _key(f)
                    and _stat_key(self.local.cached_path_of(path)) == _key(c))
        except BadPath:
            return False

    def _settle(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None, c: _Copy | None,
                entry: index.CacheEntry | None, cloud: Cloud) -> None:
        """Report (and, asked to, repair) the confirmed problems of `row`: inside the write
        transaction that confirmed them."""
        problems = _diagnose(row, f, c, entry, cloud)
        kinds = {kind for kind, _ in problems}
        done: dict[str, str] = {}
        if self.repair and problems:
            try:
                if row.uploaded:
                    self._repair_uploaded(conn, row, f, c, cloud, kinds, done)
                else:
                    self._repair_local(conn, row, f, c, cloud, kinds, done)
            except OSError as exc:  # what was done before stays done, and is consistent
                for kind in kinds - done.keys():
                    done[kind] = f"failed: {exc}"
        for kind, detail in problems:
            self._found(kind, row.path, detail, done.get(kind))

    # -- repairs (inside the confirming transaction) ---------------------------------------------

    def _repair_uploaded(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                         c: _Copy | None, cloud: Cloud, kinds: set[str],
                         done: dict[str, str]) -> None:
        path, now = row.path, time.time()
        cloud_bad = kinds & _REMOTE_KINDS
        if cloud_bad and not (_good(f, row) or _good(c, row)):
            done.update(dict.fromkeys(kinds, self._drop_row(conn, row, f, c)))
            return
        if "corrupt" in kinds and f is not None:
            moved = self._quarantine(f, path)
            other = "the cache's copy" if _good(c, row) else "the cloud copy"
            done["corrupt"] = f"moved the bad bytes to {moved}; reads use {other}"
            f = None
        if "corrupt-cache" in kinds and c is not None:
            moved = self._quarantine(c, path)
            index.remove(conn, path)
            done["corrupt-cache"] = (f"moved the bad bytes to {moved} and dropped the index "
                                     "entry; the next read downloads the file again")
            c = None
        if "cache-entry" in kinds:
            index.remove(conn, path)
            done["cache-entry"] = "dropped the index entry"
        if "cache-unindexed" in kinds and not cloud_bad:
            index.add(conn, path, row.version, row.size, row.sha256, now)
            done["cache-unindexed"] = "indexed them: the cache counts and evicts them again"
        if cloud_bad:
            if f is None:
                assert c is not None  # a good copy is somewhere (checked above)
                self._cache_to_files(path)
                f, c = dataclasses.replace(c, area="files"), None
            index.remove(conn, path)  # a local file has no evictable entry
            for kind in kinds & {"cache-entry", "cache-unindexed"}:
                done[kind] = "dropped the index entry: the file is local again"
            # As a move back from the cloud records it (`remote` and `remote_key` stay: a
            # DELETE must still remove whatever the remote holds under the key).
            conn.execute("UPDATE files SET location = 'local', inode = ?, remote_etag = NULL, "
                         "uploaded_at = NULL, last_error = NULL WHERE path = ?", (f.ino, path))
            entries.schedule(conn, path, "upload", row.version, DEFAULT_REMOTE, now, now)
            done.update(dict.fromkeys(cloud_bad, "re-queued its upload from the good local "
                                      "bytes, due now (the file is local until the cloud "
                                      "holds it again)"))
            if "inode" in kinds:
                done["inode"] = "recorded the inode of its bytes"
            return
        self._fix_inode(conn, row, f, c, kinds, done)

    def _repair_local(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                      c: _Copy | None, cloud: Cloud, kinds: set[str],
                      done: dict[str, str]) -> None:
        path = row.path
        if not _good(f if f is not None else c, row):
            if (isinstance(cloud, RemoteObject) and cloud.size == row.size
                    and cloud.sha256 == row.sha256):
                # Proven the same bytes (downloaded and hashed just now): reads use the cloud.
                bad = [self._quarantine(copy, path) for copy in (f, c) if copy is not None]
                index.remove(conn, path)
                conn.execute("UPDATE files SET location = 'remote', uploaded_at = ?, "
                             "last_error = NULL WHERE path = ? AND version = ?",
                             (time.time(), path, row.version))
                self._drop_upload(conn, path)
                text = "pointed the row back at its cloud copy (downloaded: the same SHA-256)"
                if bad:
                    text += f"; the bad bytes are in {', '.join(bad)}"
                done.update(dict.fromkeys(kinds, text))
            elif f is None and c is None and (row.remote is None or cloud is not UNCHECKED):
                done.update(dict.fromkeys(kinds, self._drop_row(conn, row, None, None)))
            elif "cache-entry" in kinds:
                # The damaged bytes are the only ones: they stay, but must not be evicted.
                index.remove(conn, path)
                done["cache-entry"] = "dropped the index entry, so eviction leaves them alone"
            return
        if "corrupt-cache" in kinds and c is not None:  # a stray copy beside good files/ bytes
            moved = self._quarantine(c, path)
            index.remove(conn, path)
            done["corrupt-cache"] = f"moved the bad bytes to {moved}"
            c = None
        if "cache-entry" in kinds:
            index.remove(conn, path)
            done["cache-entry"] = "dropped the index entry (its bytes stay, never evicted)"
        self._fix_inode(conn, row, f, c, kinds, done)

    def _fix_inode(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                   c: _Copy | None, kinds: set[str], done: dict[str, str]) -> None:
        """Record the inode of the bytes reads find first now (another after a quarantine)."""
        reads = f if f is not None else c
        if reads is not None and reads.good(row) and reads.ino != row.inode:
            self.registry.set_inode(conn, row.path, reads.ino)
            if "inode" in kinds:
                done["inode"] = "recorded the inode of its bytes"

    def _drop_row(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                  c: _Copy | None) -> str:
        """No good copy of the file is left anywhere: forget it (bad bytes to quarantine)."""
        moved = [self._quarantine(copy, row.path) for copy in (f, c) if copy is not None]
        self._drop_upload(conn, row.path)
        self.registry.delete_file(conn, row.path)  # a trigger drops its cache index entry
        text = "no good copy anywhere: dropped the row and its queued upload"
        if moved:
            text += f"; the bad bytes are in {', '.join(moved)}"
        return text

    @staticmethod
    def _drop_upload(conn: sqlite3.Connection, path: str) -> None:
        entry = entries.get(conn, path)
        if entry is not None and entry.op == "upload":
            entries.drop(conn, path)

    def _quarantine(self, copy: _Copy, path: str) -> str:
        """Move bytes out of the way, never deleting them: `quarantine/<run>/<area>/<path>`."""
        root = self.local.root if copy.area == "files" else self.local.cache_root
        target = self.quarantine_dir / copy.area / path
        for attempt in range(2):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(copy.file, target)
                break
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                if attempt:
                    raise
                # A name that clashes with one quarantined before in this run.
                target = (self.quarantine_dir / f"{copy.area}-{time.monotonic_ns()}"
                          / Path(path).name)
        fsync_dir(target.parent)
        prune_empty_dirs(copy.file.parent, root)
        return str(target.relative_to(self.store.datadir.root))

    def _cache_to_files(self, path: str) -> None:
        source, target = self.local.cached_path_of(path), self.local.path_of(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        fsync_dir(target.parent)
        prune_empty_dirs(source.parent, self.local.cache_root)

    # -- remote objects no row knows -------------------------------------------------------------

    def _check_unknown(self, found: RemoteObject) -> None:
        reader = self.registry.reader
        if not _is_utf8(found.path):
            return  # cannot be a key filestore wrote; and nothing to look up
        if _get_row(reader, found.path) is not None or entries.get(reader, found.path):
            return  # a file's (an older copy, an upload in flight), or a remote delete queued
        if self._kept_deleted:
            self.report.kept_objects += 1
            return
        assert self.remote is not None
        if self.remote.head(found.path) is None:
            return  # deleted meanwhile
        if _get_row(reader, found.path) is not None or entries.get(reader, found.path):
            return  # recorded meanwhile
        self._found("remote-unknown", found.path,
                    f"the remote holds {size_text(found.size)} that no file of the registry "
                    "describes (left as it is: verify never deletes a remote object)")

    # -- bytes no row describes ------------------------------------------------------------------

    def _orphans(self) -> None:
        """Walk files/ and cache/ for bytes no row describes, a batch of candidates at a time."""
        batch: list[tuple[str, str, int]] = []
        for area, root in (("files", self.local.root), ("cache", self.local.cache_root)):
            for path, size in _walk(root):
                if _is_utf8(path) and _get_row(self.registry.reader, path) is not None:
                    continue  # the row's check looked at these bytes
                batch.append((area, path, size))
                if len(batch) >= _PAGE:
                    self._settle_orphans(batch)
                    batch = []
        if batch:
            self._settle_orphans(batch)

    def _settle_orphans(self, batch: list[tuple[str, str, int]]) -> None:
        """Hash the candidates, then confirm each in a transaction of its own. A DELETE drops
        the row in one transaction and unlinks the bytes in the next, with a "delete" intent
        between them (see store.py): bytes without a row but with an intent are a PUT or a
        DELETE finishing, not an orphan."""
        copies: list[_Copy] = []
        for area, path, size in batch:
            kind = _ORPHAN_KINDS[area]
            root = self.local.root if area == "files" else self.local.cache_root
            if size < 0:
                self._found(kind, path, "not a regular file (a symlink?): left as it is")
                continue
            problem = _name_problem(path)
            if problem:
                self._found(kind, path, f"a name no file may have ({problem}): left as it is")
                continue
            try:
                copy = self._hash(root / path, area, size)
            except OSError as exc:
                self._found("unreadable", f"{area}/{path}", str(exc))
                continue
            if copy is not None:  # (None: gone meanwhile)
                copies.append(copy)
        for copy in copies:
            root = self.local.root if copy.area == "files" else self.local.cache_root
            path = str(copy.file.relative_to(root))
            with self.registry.transaction() as conn:
                if (_get_row(conn, path) is not None or _stat_key(copy.file) != _key(copy)
                        or conn.execute("SELECT 1 FROM intents WHERE path = ?",
                                        (path,)).fetchone()):
                    continue  # recorded, changed or being written meanwhile: not an orphan
                repair = None
                if self.repair:
                    try:
                        repair = self._adopt(conn, path, copy)
                    except OSError as exc:
                        repair = f"failed: {exc}"
                self._found(_ORPHAN_KINDS[copy.area], path, f"{copy.area}/ holds "
                            f"{size_text(copy.size)} that no file of the registry describes",
                            repair)

    def _adopt(self, conn: sqlite3.Connection, path: str, copy: _Copy) -> str:
        entry = entries.get(conn, path)
        root = self.local.root if copy.area == "files" else self.local.cache_root
        if entry is not None and entry.op == "delete":
            # A DELETE was answered and dropped the row, then its process died before the
            # unlink; the remote still holds the copy until the queued delete runs.
            copy.file.unlink()
            prune_empty_dirs(copy.file.parent, root)
            return "removed: the leftover of a DELETE already answered (its remote delete " \
                   "is queued)"
        conflict = self.registry.namespace_conflict(conn, path)
        if conflict is None and copy.area == "cache" and _stat_key(
                self.local.path_of(path)) is not None:
            conflict = f"files/ holds other bytes for {path!r}"
        if conflict is not None:
            return f"moved to {self._quarantine(copy, path)}: {conflict}"
        if copy.area == "cache":
            self._cache_to_files(path)
        assert copy.sha256 is not None  # hashed: the expected size was its own
        # Recorded exactly as a PUT records its bytes (new version, upload queued after the
        # cool-down), in this transaction, which re-checked that no row exists.
        self.store._record_put(conn, path, copy.size, copy.sha256, guess_content_type(path),
                               copy.ino)
        return "adopted as a new file, as a PUT would store it (its upload is queued)"


def _name_problem(path: str) -> str | None:
    """Why `path`, a name found on disk, cannot be a file's path as it is (None: it can)."""
    if not _is_utf8(path):
        return "not UTF-8"
    try:
        if paths.normalize(path) != path:
            return "not in Unicode NFC form"
    except BadPath as exc:
        return exc.detail
    return None


# -- restore -------------------------------------------------------------------------------------

_REGISTRY_TABLES = {"files", "counters", "intents"}


def restore_registry(settings: Settings, source: Path) -> Path | None:
    """Install `source` (a `filestore backup`) as the registry of a data directory that no
    process uses; the registry it replaces is kept beside it (returned; None if there was none).

    Refused while any process uses the directory (`Conflict`, exit 1), or when `source` is not a
    sound SQLite registry of a schema this filestore knows (`ConfigError`, exit 2).
    """
    datadir = DataDir(settings.data_dir)
    datadir.create()
    source = source.absolute()
    if source == datadir.registry_path.absolute():
        raise ConfigError(f"{source} is the data directory's registry itself")
    start_fd = datadir.start_lock()  # a server starting now waits until this is done
    try:
        alone = datadir.join()
        try:
            if not alone:
                raise Conflict(f"a filestore process is using {settings.data_dir}: stop it "
                               "before restoring its registry")
            tmp = datadir.root / f".{datadir.registry_path.name}.restore"
            _copy_registry(source, tmp)
            return _install_registry(tmp, datadir.registry_path)
        finally:
            datadir.leave()
    finally:
        os.close(start_fd)


def _copy_registry(source: Path, tmp: Path) -> None:
    """Check `source` and copy it to `tmp` (self-contained, fsynced) with SQLite's backup API,
    which also takes in a `-wal` file beside the source."""
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"{source}: cannot open it ({exc})") from None
    try:
        try:
            version = src.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in src.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            check = src.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{source}: not a SQLite database ({exc})") from None
        if not tables >= _REGISTRY_TABLES or version < 1:
            raise ConfigError(f"{source}: not a filestore registry")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{source}: a registry of schema version {version}, newer than "
                              f"this filestore ({SCHEMA_VERSION}); upgrade filestore")
        if check != "ok":
            raise ConfigError(f"{source}: the database is damaged ({check})")
        copy = sqlite3.connect(tmp)
        try:
            src.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            # The PUTs in flight when the backup was taken belong to processes long gone:
            # recovery would record whatever lies at their paths now under their hashes.
            copy.execute("DELETE FROM intents")
            copy.commit()
        finally:
            copy.close()
    finally:
        src.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def _install_registry(tmp: Path, registry: Path) -> Path | None:
    """Rename `tmp` over `registry`, keeping the old one (and its -wal, which holds its latest
    transactions) as `registry.sqlite3.replaced-<time>`; its -shm is only an index, rebuilt."""
    kept = None
    if registry.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = registry.with_name(f"{registry.name}.replaced-{stamp}")
        for n in range(1, 1000):
            if not kept.exists():
                break
            kept = registry.with_name(f"{registry.name}.replaced-{stamp}-{n}")
        try:
            os.link(registry, kept)
        except OSError:
            shutil.copyfile(registry, kept)
        wal = Path(f"{registry}-wal")
        if wal.exists():
            os.replace(wal, Path(f"{kept}-wal"))
    Path(f"{registry}-shm").unlink(missing_ok=True)
    os.replace(tmp, registry)
    fsync_dir(registry.parent)
    return kept
