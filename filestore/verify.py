"""`filestore verify`: the registry against the bytes it describes, and the repairs that are safe.

What is compared, row by row in path order (a page of rows at a time: a million files cost a page
of memory, and memory grows only with the problems found):

- every byte in files/ and cache/ against the row's size and SHA-256 (1 MiB blocks);
- the row's inode against the bytes reads find first (files/, then cache/);
- the cache index against the cache area;
- with `--remote`, the listing of every configured remote against the rows, merged in path order
  as they arrive (one listing per remote, each in path order): each row against the object in the
  remote its row records, by size, and SHA-256 where the store reports one (nothing is downloaded,
  except to prove a cloud copy before a repair relies on it);

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
- remote-missing, remote-different: an uploaded file's object is missing from the remote its row
  records, or of another size or checksum. Repair: good local bytes go to files/, the row is local
  again and its upload due now, to the remote the storage plan routes it to now (none if the plan
  keeps it local); with no good local bytes, another remote holding the same bytes (proven by
  download; the planned remote first) is recorded as the file's; else no copy is left, and the row
  is dropped. A file not uploaded whose local bytes are lost is pointed the same way at a remote
  holding the same bytes (the one its row records first): after a `filestore restore`, that is how
  files uploaded since the backup find their remote again.
- orphan, orphan-cache: bytes in files/ (cache/) that no row describes. Repair: adopted as a PUT
  would store them (upload queued); the leftover of an answered DELETE whose remote delete is
  still queued is removed; a name that clashes with registered files is quarantined.
- remote-unknown: an object under a remote's prefix no row claims (the row of its path records
  another remote, or there is none). Left: verify never deletes a remote object.
- remote-not-configured: the row records the file in a remote the config does not name: its cloud
  copy can be neither read nor deleted. Left: the config needs that remote back.
- unsafe-link, unreadable: a symlink leading outside the data directory; a file that cannot be
  read. Left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import paths
from .cache import index
from .cache.reconcile import _is_utf8, _walk
from .config import DEFAULT_REMOTE, Settings
from .errors import BadPath, RemoteNotFound
from .fsutil import fsync_dir, prune_empty_dirs
from .local import CHUNK_SIZE
from .queue import entries
from .remote import Remote, RemoteObject, connected_remotes
from .stats import size_text
from .store import Store, guess_content_type

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
    remote: str | None = None  # the remote the finding is about (remote-* kinds)

    def text(self) -> str:
        line = f"{self.kind}: {self.path}: {self.detail}"
        return line + (f"\n    repaired: {self.repair}" if self.repair else "")


@dataclasses.dataclass
class Report:
    remote: bool = False  # whether the remotes were compared
    remotes: list[str] = dataclasses.field(default_factory=list)  # their names
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
                        "remotes": self.remotes if self.remote else None,
                        "kept_objects": self.kept_objects, "problems": len(self.findings),
                        "repaired": self.repaired},
            "findings": [dataclasses.asdict(finding) for finding in self.findings],
        }

    def summary(self) -> str:
        checked = f"verify: {_count(self.files, 'file')} checked ({size_text(self.hashed)} hashed)"
        if self.remote:
            checked += f", {_count(self.objects, 'remote object')}"
            if len(self.remotes) > 1:
                checked += f" in {len(self.remotes)} remotes"
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

_ROW_COLUMNS = ("path, size, sha256, location, version, inode, remote, remote_key, uploaded_at, "
                "content_type")


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
    content_type: str  # what the storage plan routes on

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


# -- what the remotes hold ----------------------------------------------------------------------

class _Unchecked(enum.Enum):
    TOKEN = 0


UNCHECKED = _Unchecked.TOKEN
# What the remote a row records holds at its path: an object, None (nothing), or UNCHECKED (not
# asked: no --remote, or a remote the config does not name).
Cloud = RemoteObject | None | Literal[_Unchecked.TOKEN]


class RemoteView:
    """One remote for this module's plain, blocking code: every call runs on a blocking
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
def remote_view(settings: Settings) -> Iterator[dict[str, RemoteView]]:
    """Every configured remote by name ("default" first), opened for the length of the block.
    One that cannot be opened, or two that overlap, is a `ConfigError` naming it."""
    with start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(connected_remotes(settings)) as remotes:
        yield {name: RemoteView(portal, remote) for name, remote in remotes.items()}


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

# A remote that holds a file's bytes, proven by download: (its name, the object as hashed).
_Proven = tuple[str, RemoteObject]


def _diagnose(row: _Row, f: _Copy | None, c: _Copy | None, entry: index.CacheEntry | None,
              cloud: Cloud, named: str | None = None) -> list[tuple[str, str]]:
    """What is wrong with one row, as (kind, detail) pairs: a pure function of what was seen,
    so the same verdict can be reached again inside the confirming transaction. `named`: the
    remote the row records, to name in the details when several are configured."""
    the_remote = "the remote" if named is None else f"the remote {named!r}"
    its_object = "the remote object" if named is None else f"the object in {the_remote}"
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
                problems.append(("remote-missing", f"uploaded, but {the_remote} has no object "
                                 "for it"))
            elif cloud.size != row.size:
                problems.append(("remote-different", f"{its_object} has {cloud.size:,} "
                                 f"bytes, the registry records {row.size:,}"))
            elif cloud.sha256 is not None and cloud.sha256 != row.sha256:
                problems.append(("remote-different", f"{its_object}'s SHA-256 is "
                                 f"{cloud.sha256}, the registry records {row.sha256}"))
    else:
        if entry is not None:
            problems.append(("cache-entry", "the cache index lists it, but it is not uploaded "
                             "yet: eviction would drop its only bytes"))
        if f is None and c is None:
            hint = ""
            if row.remote is not None and cloud is UNCHECKED:
                hint = (f"; {the_remote} holds a copy of some version of it: `filestore "
                        "verify --remote --repair` checks whether it is this one")
            problems.append(("missing", f"registered ({size_text(row.size)}, not uploaded) but "
                             f"its bytes are in neither files/ nor cache/{hint}"))
    reads = f if f is not None else c  # where reads look first
    if reads is not None and reads.good(row) and reads.ino != row.inode:
        problems.append(("inode", f"the row records inode {row.inode}, its bytes are inode "
                         f"{reads.ino}"))
    return problems


class Verifier:
    def __init__(self, store: Store, *, repair: bool = False,
                 remote: Mapping[str, RemoteView] | None = None,
                 progress: Callable[[int], None] = lambda rows: None) -> None:
        """`remote`: every configured remote by name (`remote_view`), to compare with the rows;
        None: the remotes are not looked at."""
        self.store = store
        self.registry = store.registry
        self.local = store.local
        self.repair = repair
        self.remotes = remote
        self.progress = progress
        self.report = Report(remote=remote is not None, remotes=list(remote or ()),
                             repair=repair)
        self._configured = list(store.settings.named_remotes())
        # With one remote the report reads as it always did; with several it names them.
        self._several = len(self._configured) > 1
        self.quarantine_dir = (store.datadir.root / "quarantine"
                               / time.strftime("%Y%m%d-%H%M%S"))
        # Remote copies of deleted files are kept on purpose: not a problem to report.
        self._kept_deleted = store.settings.upload.delete_delay is None
        self._buffer = bytearray(CHUNK_SIZE)

    def run(self) -> Report:
        with contextlib.ExitStack() as stack:
            listings: dict[str, _Listing] = {}
            for name, view in (self.remotes or {}).items():
                listing = listings[name] = _Listing(view.objects())
                stack.callback(listing.close)
            self._rows(listings)
        self._orphans()
        return self.report

    def _rows(self, listings: dict[str, _Listing]) -> None:
        """Every row, a page at a time, each with the objects every remote holds at its path:
        one listing per remote, each consumed in step with the rows."""
        after = ""
        while page := self._page(after):
            for row in page:
                seen: dict[str, RemoteObject] = {}  # remote -> its object at the row's path
                for name, listing in listings.items():
                    while (unknown := listing.pop_before(row.path)) is not None:
                        self._check_unknown(name, unknown)
                    if (at := listing.pop_at(row.path)) is not None:
                        seen[name] = at
                # A row that never recorded a remote is compared with the default one's
                # listing, as it always was (a file not uploaded has nothing to compare).
                recorded = row.remote or DEFAULT_REMOTE
                cloud: Cloud = UNCHECKED
                if row.remote is not None and row.remote not in self._configured:
                    self._found("remote-not-configured", row.path,
                                f"the registry records it in the remote {row.remote!r}, which "
                                f"the config does not name (configured: "
                                f"{', '.join(self._configured)}): its cloud copy can be neither "
                                f"read nor deleted; add [remotes.{row.remote}] back",
                                remote=row.remote)
                elif recorded in listings:
                    cloud = seen.get(recorded)
                self._check_row(row, cloud, seen)
                # The row's path in the remotes it does not record: a copy no row claims, unless
                # the check just recorded it there (its repair found the file's bytes there).
                for name, found in seen.items():
                    if name != row.remote:
                        self._check_unknown(name, found)
            self.report.files += len(page)
            self.progress(len(page))
            after = page[-1].path
        for name, listing in listings.items():
            while (unknown := listing.pop_before(None)) is not None:
                self._check_unknown(name, unknown)
            self.report.objects += listing.count

    def _page(self, after: str) -> list[_Row]:
        rows = self.registry.reader.execute(
            f"SELECT {_ROW_COLUMNS} FROM files WHERE path > ? ORDER BY path LIMIT ?",
            (after, _PAGE)).fetchall()
        return [_Row(*row) for row in rows]

    def _found(self, kind: str, path: str, detail: str, repair: str | None = None,
               remote: str | None = None) -> None:
        self.report.findings.append(Finding(kind, _shown(path), detail, repair, remote))

    def _named(self, row: _Row) -> str | None:
        """The remote the row records, to name in its findings (None: one remote, unnamed)."""
        return (row.remote or DEFAULT_REMOTE) if self._several else None

    def _head(self, row: _Row) -> Cloud:
        """The object the remote the row records holds at its path, asked now."""
        view = None if self.remotes is None else self.remotes.get(row.remote or DEFAULT_REMOTE)
        return UNCHECKED if view is None else view.head(row.path)

    # -- one row ---------------------------------------------------------------------------------

    def _check_row(self, row: _Row, cloud: Cloud, seen: Mapping[str, RemoteObject]) -> None:
        """`cloud`: what the remote the row records holds at its path; `seen`: what every
        remote listed there (where a repair looks for the file's bytes when its own are lost)."""
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
            named = self._named(row)
            if not _diagnose(row, f, c, entry, cloud, named):
                return
            cloud, found = self._confirm_cloud(row, f, c, entry, cloud, seen)
            if not _diagnose(row, f, c, entry, cloud, named):
                return
            with self.registry.transaction() as conn:
                current = _get_row(conn, row.path)
                if current == row and self._unchanged(row.path, f, c):
                    self._settle(conn, row, f, c, index.get(conn, row.path), cloud, found)
                    return
            if current is None:
                return  # deleted meanwhile: nothing to check
            row = current  # changed meanwhile (a PUT, an upload, a move): look again
            if self.remotes is not None:
                cloud = self._head(row)
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
                       entry: index.CacheEntry | None, cloud: Cloud,
                       seen: Mapping[str, RemoteObject]) -> tuple[Cloud, _Proven | None]:
        """A listing is a moment ago: ask the store again before a remote finding counts. A
        repair that would rely on a cloud copy because the file's own bytes are lost looks for
        one (see `_find_copy`); None: no such repair, or no copy."""
        if self.remotes is None or cloud is UNCHECKED:
            return cloud, None
        recorded = row.remote or DEFAULT_REMOTE
        if {kind for kind, _ in _diagnose(row, f, c, entry, cloud)} & _REMOTE_KINDS:
            cloud = self._head(row)
            lost = not (_good(f, row) or _good(c, row))
            if (self.repair and lost and {kind for kind, _ in _diagnose(
                    row, f, c, entry, cloud)} & _REMOTE_KINDS):
                # Its remote lost (or changed) the bytes, and so did the disk: another remote
                # may hold them (a plan changed after a backup was restored).
                return cloud, self._find_copy(row, {n: o for n, o in seen.items()
                                                    if n != recorded}, None)
            return cloud, None
        if self.repair and not row.uploaded and not _good(f if f is not None else c, row):
            # The bytes of a file not uploaded are lost or damaged: the copy the remote its row
            # records holds (a move back from the cloud keeps it) is the first to try.
            objects = {**seen, recorded: cloud} if cloud is not None else dict(seen)
            return cloud, self._find_copy(row, objects, row.remote)
        return cloud, None

    def _find_copy(self, row: _Row, objects: Mapping[str, RemoteObject],
                   first: str | None) -> _Proven | None:
        """A remote that holds the row's bytes, proven by download and hash (the row cannot
        tell this version from an older one of the same size): `first` first, then the remote
        the storage plan routes the path to, then the others in config order. A copy in a
        remote not chosen is left, and reported as no row's."""
        assert self.remotes is not None
        planned = self.store.route(row.path, row.content_type).remote
        for name in dict.fromkeys(n for n in (first, planned, *self.remotes) if n is not None):
            listed = objects.get(name)
            if listed is None or listed.size != row.size or name not in self.remotes or (
                    listed.sha256 is not None and listed.sha256 != row.sha256):
                continue
            proven = self.remotes[name].digest(row.path)
            if proven is not None and (proven.size, proven.sha256) == (row.size, row.sha256):
                return name, proven
        return None

    def _unchanged(self, path: str, f: _Copy | None, c: _Copy | None) -> bool:
        try:
            return (_stat_key(self.local.path_of(path)) == _key(f)
                    and _stat_key(self.local.cached_path_of(path)) == _key(c))
        except BadPath:
            return False

    def _settle(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None, c: _Copy | None,
                entry: index.CacheEntry | None, cloud: Cloud, found: _Proven | None) -> None:
        """Report (and, asked to, repair) the confirmed problems of `row`: inside the write
        transaction that confirmed them."""
        problems = _diagnose(row, f, c, entry, cloud, self._named(row))
        kinds = {kind for kind, _ in problems}
        done: dict[str, str] = {}
        if self.repair and problems:
            try:
                if row.uploaded:
                    self._repair_uploaded(conn, row, f, c, found, kinds, done)
                else:
                    self._repair_local(conn, row, f, c, cloud, found, kinds, done)
            except OSError as exc:  # what was done before stays done, and is consistent
                for kind in kinds - done.keys():
                    done[kind] = f"failed: {exc}"
        for kind, detail in problems:
            self._found(kind, row.path, detail, done.get(kind),
                        (row.remote or DEFAULT_REMOTE) if kind in _REMOTE_KINDS else None)

    # -- repairs (inside the confirming transaction) ---------------------------------------------

    def _repair_uploaded(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                         c: _Copy | None, found: _Proven | None, kinds: set[str],
                         done: dict[str, str]) -> None:
        path, now = row.path, time.time()
        cloud_bad = kinds & _REMOTE_KINDS
        if cloud_bad and not (_good(f, row) or _good(c, row)) and found is None:
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
        if cloud_bad and found is not None:
            # No good local bytes (else `found` was not looked for), but another remote holds
            # the file's: that one is recorded as the file's remote.
            done.update(dict.fromkeys(cloud_bad, self._record_copy(conn, row, found)))
            return
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
            done.update(dict.fromkeys(cloud_bad, self._requeue(conn, row, now)))
            if "inode" in kinds:
                done["inode"] = "recorded the inode of its bytes"
            return
        self._fix_inode(conn, row, f, c, kinds, done)

    def _repair_local(self, conn: sqlite3.Connection, row: _Row, f: _Copy | None,
                      c: _Copy | None, cloud: Cloud, found: _Proven | None, kinds: set[str],
                      done: dict[str, str]) -> None:
        path = row.path
        if not _good(f if f is not None else c, row):
            if found is not None:
                # Proven the same bytes (downloaded and hashed just now): reads use the cloud.
                bad = [self._quarantine(copy, path) for copy in (f, c) if copy is not None]
                index.remove(conn, path)
                text = self._record_copy(conn, row, found)
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

    def _record_copy(self, conn: sqlite3.Connection, row: _Row, found: _Proven) -> str:
        """Record the file as uploaded to the remote `found` proved to hold its bytes."""
        name, _ = found
        assert self.remotes is not None  # (found by looking in them)
        conn.execute("UPDATE files SET location = 'remote', remote = ?, remote_key = ?, "
                     "remote_etag = NULL, uploaded_at = ?, last_error = NULL "
                     "WHERE path = ? AND version = ?",
                     (name, self.remotes[name].remote.key_for(row.path), time.time(), row.path,
                      row.version))
        self._drop_upload(conn, row.path)
        if not self._several:
            return "pointed the row back at its cloud copy (downloaded: the same SHA-256)"
        return (f"pointed the row at its copy in the remote {name!r} (downloaded: the same "
                "SHA-256), and recorded that remote as the file's")

    def _requeue(self, conn: sqlite3.Connection, row: _Row, now: float) -> str:
        """Queue the upload of a file made local again, due now, to the remote the storage
        plan routes it to now (the one that lost it may no longer be the file's)."""
        route = self.store.route(row.path, row.content_type)
        if not route.upload:
            self._drop_upload(conn, row.path)
            return ("the file is local again, from its good local bytes; the storage plan "
                    "keeps it local (upload = false), so no upload is queued")
        entries.schedule(conn, row.path, "upload", row.version, route.remote, now, now)
        to = f" to the remote {route.remote!r}" if self._several else ""
        return (f"re-queued its upload{to} from the good local bytes, due now (the file is "
                "local until the cloud holds it again)")

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

    def _check_unknown(self, remote: str, found: RemoteObject) -> None:
        reader = self.registry.reader
        if not _is_utf8(found.path):
            return  # cannot be a key filestore wrote; and nothing to look up
        if _claimed(reader, remote, found.path):
            return  # a file's (an older copy, an upload in flight), or a remote delete queued
        if self._kept_deleted:
            self.report.kept_objects += 1
            return
        assert self.remotes is not None
        if self.remotes[remote].head(found.path) is None:
            return  # deleted meanwhile
        if _claimed(reader, remote, found.path):
            return  # recorded meanwhile
        row = _get_row(reader, found.path)
        where = f"the remote {remote!r}" if self._several else "the remote"
        detail = f"{where} holds {size_text(found.size)} that no file of the registry describes"
        if row is not None and row.remote is not None:
            detail = (f"{where} holds {size_text(found.size)} at this path, but the registry "
                      f"records the file in the remote {row.remote!r}")
        self._found("remote-unknown", found.path,
                    f"{detail} (left as it is: verify never deletes a remote object)",
                    remote=remote)

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


def _claimed(conn: sqlite3.Connection, remote: str, path: str) -> bool:
    """Whether the object at `path` in `remote` is accounted for: the path's row records that
    remote (or none yet: a row from before its upload, as after a restore, claims its path
    everywhere), or the queue has work on the path there (a remote delete, an upload, which
    follows the plan wherever it goes)."""
    row = _get_row(conn, path)
    if row is not None and row.remote in (None, remote):
        return True
    entry = entries.get(conn, path)
    return entry is not None and (entry.remote == remote or entry.op == "upload")


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
