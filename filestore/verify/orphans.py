"""What no row describes: bytes in files/ and cache/ (orphan, orphan-cache), each confirmed in a
transaction of its own and, with `--repair`, adopted (see `repair.py`); and objects under a
remote's prefix no row claims (remote-unknown), confirmed with a HEAD and left as they are:
verify never deletes a remote object."""

from __future__ import annotations

from collections.abc import Mapping

from ..cache.reconcile import _is_utf8
from ..registry import Registry, Tables
from ..remote import RemoteObject
from ..stats import size_text
from .diagnose import Copy, name_problem
from .findings import Report
from .remote import RemoteView
from .repair import Repairer
from .scan import Scanner, key, stat_key

_ORPHAN_KINDS = {"files": "orphan", "cache": "orphan-cache"}


class Unclaimed:
    """The check of what no row describes, for one run; its findings go to `report`."""

    def __init__(self, registry: Registry, scanner: Scanner, repairer: Repairer, report: Report,
                 *, repair: bool, remotes: Mapping[str, RemoteView] | None, several: bool,
                 kept_deleted: bool) -> None:
        self.registry = registry
        self.scanner = scanner
        self.repairer = repairer
        self.report = report
        self.repair = repair
        self.remotes = remotes
        self.several = several
        # Remote copies of deleted files are kept on purpose: not a problem to report.
        self.kept_deleted = kept_deleted

    # -- remote objects no row knows -------------------------------------------------------------

    def remote_object(self, remote: str, found: RemoteObject) -> None:
        """An object `remote` listed that the row check did not account for."""
        reader = self.registry.read
        if not _is_utf8(found.path):
            return  # cannot be a key filestore wrote; and nothing to look up
        if claimed(reader, remote, found.path):
            return  # a file's (an older copy, an upload in flight), or a remote delete queued
        if self.kept_deleted:
            self.report.kept_objects += 1
            return
        assert self.remotes is not None
        if self.remotes[remote].head(found.path) is None:
            return  # deleted meanwhile
        if claimed(reader, remote, found.path):
            return  # recorded meanwhile
        row = reader.files.get(found.path)
        where = f"the remote {remote!r}" if self.several else "the remote"
        detail = f"{where} holds {size_text(found.size)} that no file of the registry describes"
        if row is not None and row.remote is not None:
            detail = (f"{where} holds {size_text(found.size)} at this path, but the registry "
                      f"records the file in the remote {row.remote!r}")
        self.report.add("remote-unknown", found.path,
                        f"{detail} (left as it is: verify never deletes a remote object)",
                        remote=remote)

    # -- bytes no row describes ------------------------------------------------------------------

    def local_bytes(self) -> None:
        """Walk files/ and cache/ for bytes no row describes, a batch of candidates at a time."""
        for batch in self.scanner.unregistered(self.registry.read):
            self._settle(batch)

    def _settle(self, batch: list[tuple[str, str, int]]) -> None:
        """Hash the candidates, then confirm each in a transaction of its own. A DELETE drops
        the row in one transaction and unlinks the bytes in the next, with a "delete" intent
        between them (see store.py): bytes without a row but with an intent are a PUT or a
        DELETE finishing, not an orphan."""
        copies: list[Copy] = []
        for area, path, size in batch:
            kind = _ORPHAN_KINDS[area]
            if size < 0:
                self.report.add(kind, path, "not a regular file (a symlink?): left as it is")
                continue
            problem = name_problem(path)
            if problem:
                self.report.add(kind, path, f"a name no file may have ({problem}): left as it is")
                continue
            try:
                copy = self.scanner.hash(self.scanner.root(area) / path, area, size)
            except OSError as exc:
                self.report.add("unreadable", f"{area}/{path}", str(exc))
                continue
            if copy is not None:  # (None: gone meanwhile)
                copies.append(copy)
        for copy in copies:
            path = str(copy.file.relative_to(self.scanner.root(copy.area)))
            with self.registry.transaction() as tx:
                if (tx.files.get(path) is not None or stat_key(copy.file) != key(copy)
                        or tx.intents.writing(path) or tx.stale.has(path)):
                    # Recorded, changed or being written meanwhile, or the bytes a change on
                    # another node superseded (the sweeper drops them): not an orphan.
                    continue
                repair = None
                if self.repair:
                    try:
                        repair = self.repairer.adopt(tx, path, copy)
                    except OSError as exc:
                        repair = f"failed: {exc}"
                self.report.add(_ORPHAN_KINDS[copy.area], path, f"{copy.area}/ holds "
                                f"{size_text(copy.size)} that no file of the registry describes",
                                repair)


def claimed(reader: Tables, remote: str, path: str) -> bool:
    """Whether the object at `path` in `remote` is accounted for: the path's row records that
    remote (or none yet: a row from before its upload, as after a restore, claims its path
    everywhere), or the queue has work on the path there (a remote delete, an upload, which
    follows the plan wherever it goes)."""
    row = reader.files.get(path)
    if row is not None and row.remote in (None, remote):
        return True
    entry = reader.queue.get(path)
    return entry is not None and (entry.remote == remote or entry.op == "upload")
