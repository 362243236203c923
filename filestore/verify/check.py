"""The check itself: `Verifier.run` walks the rows in path order beside every remote's listing,
looks at each row's bytes (`scan.py`), diagnoses them (`diagnose.py`), confirms a suspicion
against the store (HEAD, or a download that proves a copy) and then inside a write transaction
against the current row and fresh stats, and there reports it and, asked to, repairs it
(`repair.py`); then it looks for what no row describes (`orphans.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from ..config import DEFAULT_REMOTE
from ..errors import BadPath
from ..registry import CacheEntry, FileRecord, Tables
from ..remote import RemoteObject
from ..store import Store
from .diagnose import REMOTE_KINDS, UNCHECKED, Cloud, Copy, diagnose, doubts_remote, good
from .findings import Report
from .orphans import Unclaimed
from .remote import Listing, Proven, RemoteView
from .repair import Repairer
from .scan import Scanner, rows

_TRIES = 3  # looks at a row that keeps changing under the check before it is left alone


class Verifier:
    def __init__(self, store: Store, *, repair: bool = False,
                 remote: Mapping[str, RemoteView] | None = None,
                 progress: Callable[[int], None] = lambda rows: None) -> None:
        """`remote`: every configured remote by name (`remote_view`), to compare with the rows;
        None: the remotes are not looked at."""
        self.store = store
        self.registry = store.registry
        self.repair = repair
        self.remotes = remote
        self.progress = progress
        self.report = Report(remote=remote is not None, remotes=list(remote or ()),
                             repair=repair)
        self._configured = list(store.settings.named_remotes())
        # With one remote the report reads as it always did; with several it names them.
        self._several = len(self._configured) > 1
        self.scanner = Scanner(store.local, self.report)
        self.repairer = Repairer(store, remote, self._several)
        self.unclaimed = Unclaimed(self.registry, self.scanner, self.repairer, self.report,
                                   repair=repair, remotes=remote, several=self._several,
                                   kept_deleted=store.settings.upload.delete_delay is None)

    def run(self) -> Report:
        with contextlib.ExitStack() as stack:
            listings: dict[str, Listing] = {}
            for name, view in (self.remotes or {}).items():
                listing = listings[name] = Listing(view.objects())
                stack.callback(listing.close)
            self._rows(listings)
        self.unclaimed.local_bytes()
        return self.report

    def _rows(self, listings: dict[str, Listing]) -> None:
        """Every row, a page at a time, each with the objects every remote holds at its path:
        one listing per remote, each consumed in step with the rows."""
        unknown_object = self.unclaimed.remote_object
        for page in rows(self.registry.read):
            for row in page:
                seen: dict[str, RemoteObject] = {}  # remote -> its object at the row's path
                for name, listing in listings.items():
                    while (unknown := listing.pop_before(row.path)) is not None:
                        unknown_object(name, unknown)
                    if (at := listing.pop_at(row.path)) is not None:
                        seen[name] = at
                # A row that never recorded a remote is compared with the default one's
                # listing, as it always was (a file not uploaded has nothing to compare).
                recorded = row.remote or DEFAULT_REMOTE
                cloud: Cloud = UNCHECKED
                if row.remote is not None and row.remote not in self._configured:
                    self.report.add("remote-not-configured", row.path,
                                    f"the registry records it in the remote {row.remote!r}, "
                                    f"which the config does not name (configured: "
                                    f"{', '.join(self._configured)}): its cloud copy can be "
                                    f"neither read nor deleted; add [remotes.{row.remote}] back",
                                    remote=row.remote)
                elif recorded in listings:
                    cloud = seen.get(recorded)
                self._check_row(row, cloud, seen)
                # The row's path in the remotes it does not record: a copy no row claims, unless
                # the check just recorded it there (its repair found the file's bytes there).
                for name, found in seen.items():
                    if name != row.remote:
                        unknown_object(name, found)
            self.report.files += len(page)
            self.progress(len(page))
        for name, listing in listings.items():
            while (unknown := listing.pop_before(None)) is not None:
                unknown_object(name, unknown)
            self.report.objects += listing.count

    def _named(self, row: FileRecord) -> str | None:
        """The remote the row records, to name in its findings (None: one remote, unnamed)."""
        return (row.remote or DEFAULT_REMOTE) if self._several else None

    def _head(self, row: FileRecord) -> Cloud:
        """The object the remote the row records holds at its path, asked now."""
        view = None if self.remotes is None else self.remotes.get(row.remote or DEFAULT_REMOTE)
        return UNCHECKED if view is None else view.head(row.path)

    # -- one row ---------------------------------------------------------------------------------

    def _check_row(self, row: FileRecord, cloud: Cloud, seen: Mapping[str, RemoteObject]) -> None:
        """`cloud`: what the remote the row records holds at its path; `seen`: what every
        remote listed there (where a repair looks for the file's bytes when its own are lost)."""
        if not self.store.holds(row) and row.location == "local":
            return  # its only bytes are on the node holding it: `verify` there checks them
        for _ in range(_TRIES):
            try:
                f, c = self.scanner.look(row)
                if not self.store.holds(row):
                    f = None  # files/ here holds an older version on its way out (sweeper.py)
            except BadPath as exc:
                self.report.add("unsafe-link", row.path, exc.detail)
                return
            except OSError as exc:
                self.report.add("unreadable", row.path, str(exc))
                return
            entry = self.registry.read.cache.get(row.path)
            named = self._named(row)
            if not diagnose(row, f, c, entry, cloud, named):
                return
            cloud, found = self._confirm_cloud(row, f, c, entry, cloud, seen)
            if not diagnose(row, f, c, entry, cloud, named):
                return
            with self.registry.transaction() as tx:
                current = tx.files.get(row.path)
                if current == row and self.scanner.unchanged(row.path, f, c):
                    self._settle(tx, row, f, c, tx.cache.get(row.path), cloud, found)
                    return
            if current is None:
                return  # deleted meanwhile: nothing to check
            row = current  # changed meanwhile (a PUT, an upload, a move): look again
            if self.remotes is not None:
                cloud = self._head(row)
        # Still changing after several looks: busy, not damaged; the next run sees it settled.

    def _confirm_cloud(self, row: FileRecord, f: Copy | None, c: Copy | None,
                       entry: CacheEntry | None, cloud: Cloud,
                       seen: Mapping[str, RemoteObject]) -> tuple[Cloud, Proven | None]:
        """A listing is a moment ago: ask the store again before a remote finding counts. A
        repair that would rely on a cloud copy because the file's own bytes are lost looks for
        one (see `_find_copy`); None: no such repair, or no copy."""
        if self.remotes is None or cloud is UNCHECKED:
            return cloud, None
        recorded = row.remote or DEFAULT_REMOTE
        if doubts_remote(row, f, c, entry, cloud):
            cloud = self._head(row)
            lost = not (good(f, row) or good(c, row))
            if self.repair and lost and doubts_remote(row, f, c, entry, cloud):
                # Its remote lost (or changed) the bytes, and so did the disk: another remote
                # may hold them (a plan changed after a backup was restored).
                return cloud, self._find_copy(row, {n: o for n, o in seen.items()
                                                    if n != recorded}, None)
            return cloud, None
        if self.repair and not row.uploaded and not good(f if f is not None else c, row):
            # The bytes of a file not uploaded are lost or damaged: the copy the remote its row
            # records holds (a move back from the cloud keeps it) is the first to try.
            objects = {**seen, recorded: cloud} if cloud is not None else dict(seen)
            return cloud, self._find_copy(row, objects, row.remote)
        return cloud, None

    def _find_copy(self, row: FileRecord, objects: Mapping[str, RemoteObject],
                   first: str | None) -> Proven | None:
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

    def _settle(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                entry: CacheEntry | None, cloud: Cloud, found: Proven | None) -> None:
        """Report (and, asked to, repair) the confirmed problems of `row`: inside the write
        transaction that confirmed them."""
        problems = diagnose(row, f, c, entry, cloud, self._named(row))
        kinds = {kind for kind, _ in problems}
        done: dict[str, str] = {}
        if self.repair and problems:
            try:
                if row.uploaded:
                    self.repairer.repair_uploaded(tx, row, f, c, found, kinds, done)
                else:
                    self.repairer.repair_local(tx, row, f, c, cloud, found, kinds, done)
            except OSError as exc:  # what was done before stays done, and is consistent
                for kind in kinds - done.keys():
                    done[kind] = f"failed: {exc}"
        for kind, detail in problems:
            self.report.add(kind, row.path, detail, done.get(kind),
                            (row.remote or DEFAULT_REMOTE) if kind in REMOTE_KINDS else None)
