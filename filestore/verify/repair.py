"""The repairs `--repair` makes, each inside the write transaction that confirmed its problem:
a row's bytes quarantined, re-indexed or moved back to files/, its upload re-queued, the row
pointed at a proven cloud copy or dropped when no good copy is left, and orphan bytes adopted.

Nothing that exists nowhere else is deleted: bytes that must leave their place go to
`quarantine/<run>/` in the data directory. Each repair returns (or records in `done`, by kind)
the sentence the report shows for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from .. import logs
from ..fsutil import fsync_dir, prune_empty_dirs
from ..registry import FileRecord, Tables
from ..store import Store, guess_content_type
from .diagnose import REMOTE_KINDS, UNCHECKED, Cloud, Copy, good
from .remote import Proven, RemoteView
from .scan import stat_key

log = logging.getLogger("filestore.verify")


class Repairer:
    """The repairs of one run. `remotes`: the configured remotes (None: not looked at);
    `several`: more than one is configured (the report then names them)."""

    def __init__(self, store: Store, remotes: Mapping[str, RemoteView] | None,
                 several: bool) -> None:
        self.store = store
        self.local = store.local
        self.remotes = remotes
        self.several = several
        self.quarantine_dir = (store.datadir.root / "quarantine"
                               / time.strftime("%Y%m%d-%H%M%S"))

    # -- a row's problems ------------------------------------------------------------------------

    def repair_uploaded(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                        found: Proven | None, kinds: set[str], done: dict[str, str]) -> None:
        try:
            self._repair_uploaded(tx, row, f, c, found, kinds, done)
        finally:  # what was done stays done, even when a later step failed
            _log_repairs(row.path, done)

    def repair_local(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                     cloud: Cloud, found: Proven | None, kinds: set[str],
                     done: dict[str, str]) -> None:
        try:
            self._repair_local(tx, row, f, c, cloud, found, kinds, done)
        finally:
            _log_repairs(row.path, done)

    def _repair_uploaded(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                         found: Proven | None, kinds: set[str], done: dict[str, str]) -> None:
        path, now = row.path, time.time()
        cloud_bad = kinds & REMOTE_KINDS
        if cloud_bad and not (good(f, row) or good(c, row)) and found is None:
            done.update(dict.fromkeys(kinds, self._drop_row(tx, row, f, c)))
            return
        if "corrupt" in kinds and f is not None:
            moved = self.quarantine(f, path)
            other = "the cache's copy" if good(c, row) else "the cloud copy"
            done["corrupt"] = f"moved the bad bytes to {moved}; reads use {other}"
            f = None
        if "corrupt-cache" in kinds and c is not None:
            moved = self.quarantine(c, path)
            tx.cache.remove(path)
            done["corrupt-cache"] = (f"moved the bad bytes to {moved} and dropped the index "
                                     "entry; the next read downloads the file again")
            c = None
        if "cache-entry" in kinds:
            tx.cache.remove(path)
            done["cache-entry"] = "dropped the index entry"
        if "cache-unindexed" in kinds and not cloud_bad:
            tx.cache.add(path, row.version, row.size, row.sha256, now)
            done["cache-unindexed"] = "indexed them: the cache counts and evicts them again"
        if cloud_bad and found is not None:
            # No good local bytes (else `found` was not looked for), but another remote holds
            # the file's: that one is recorded as the file's remote.
            done.update(dict.fromkeys(cloud_bad, self._record_copy(tx, row, found)))
            return
        if cloud_bad:
            if f is None:
                assert c is not None  # a good copy is somewhere (checked above)
                self._cache_to_files(path)
                f, c = dataclasses.replace(c, area="files"), None
            tx.cache.remove(path)  # a local file has no evictable entry
            for kind in kinds & {"cache-entry", "cache-unindexed"}:
                done[kind] = "dropped the index entry: the file is local again"
            # As a move back from the cloud records it (`remote` and `remote_key` stay: a
            # DELETE must still remove whatever the remote holds under the key).
            tx.files.mark_local(path, f.ino)
            done.update(dict.fromkeys(cloud_bad, self._requeue(tx, row, now)))
            if "inode" in kinds:
                done["inode"] = "recorded the inode of its bytes"
            return
        self._fix_inode(tx, row, f, c, kinds, done)

    def _repair_local(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                      cloud: Cloud, found: Proven | None, kinds: set[str],
                      done: dict[str, str]) -> None:
        path = row.path
        if not good(f if f is not None else c, row):
            if found is not None:
                # Proven the same bytes (downloaded and hashed just now): reads use the cloud.
                bad = [self.quarantine(copy, path) for copy in (f, c) if copy is not None]
                tx.cache.remove(path)
                text = self._record_copy(tx, row, found)
                if bad:
                    text += f"; the bad bytes are in {', '.join(bad)}"
                done.update(dict.fromkeys(kinds, text))
            elif f is None and c is None and (row.remote is None or cloud is not UNCHECKED):
                done.update(dict.fromkeys(kinds, self._drop_row(tx, row, None, None)))
            elif "cache-entry" in kinds:
                # The damaged bytes are the only ones: they stay, but must not be evicted.
                tx.cache.remove(path)
                done["cache-entry"] = "dropped the index entry, so eviction leaves them alone"
            return
        if "corrupt-cache" in kinds and c is not None:  # a stray copy beside good files/ bytes
            moved = self.quarantine(c, path)
            tx.cache.remove(path)
            done["corrupt-cache"] = f"moved the bad bytes to {moved}"
            c = None
        if "cache-entry" in kinds:
            tx.cache.remove(path)
            done["cache-entry"] = "dropped the index entry (its bytes stay, never evicted)"
        self._fix_inode(tx, row, f, c, kinds, done)

    def _fix_inode(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None,
                   kinds: set[str], done: dict[str, str]) -> None:
        """Record the inode of the bytes reads find first now (another after a quarantine)."""
        reads = f if f is not None else c
        if reads is not None and reads.good(row) and reads.ino != row.inode:
            tx.files.set_inode(row.path, reads.ino)
            if "inode" in kinds:
                done["inode"] = "recorded the inode of its bytes"

    def _drop_row(self, tx: Tables, row: FileRecord, f: Copy | None, c: Copy | None) -> str:
        """No good copy of the file is left anywhere: forget it (bad bytes to quarantine)."""
        moved = [self.quarantine(copy, row.path) for copy in (f, c) if copy is not None]
        self._drop_upload(tx, row.path)
        tx.files.delete(row.path)  # a trigger drops its cache index entry
        text = "no good copy anywhere: dropped the row and its queued upload"
        if moved:
            text += f"; the bad bytes are in {', '.join(moved)}"
        return text

    def _record_copy(self, tx: Tables, row: FileRecord, found: Proven) -> str:
        """Record the file as uploaded to the remote `found` proved to hold its bytes."""
        name, _ = found
        assert self.remotes is not None  # (found by looking in them)
        tx.files.point_at_copy(row.path, row.version, name,
                               self.remotes[name].remote.key_for(row.path), time.time())
        self._drop_upload(tx, row.path)
        if not self.several:
            return "pointed the row back at its cloud copy (downloaded: the same SHA-256)"
        return (f"pointed the row at its copy in the remote {name!r} (downloaded: the same "
                "SHA-256), and recorded that remote as the file's")

    def _requeue(self, tx: Tables, row: FileRecord, now: float) -> str:
        """Queue the upload of a file made local again, due now, to the remote the storage
        plan routes it to now (the one that lost it may no longer be the file's)."""
        route = self.store.route(row.path, row.content_type)
        if not route.upload:
            self._drop_upload(tx, row.path)
            return ("the file is local again, from its good local bytes; the storage plan "
                    "keeps it local (upload = false), so no upload is queued")
        tx.queue.schedule(row.path, "upload", row.version, route.remote, now, now)
        to = f" to the remote {route.remote!r}" if self.several else ""
        return (f"re-queued its upload{to} from the good local bytes, due now (the file is "
                "local until the cloud holds it again)")

    @staticmethod
    def _drop_upload(tx: Tables, path: str) -> None:
        entry = tx.queue.get(path)
        if entry is not None and entry.op == "upload":
            tx.queue.drop(path)

    # -- bytes no row describes ------------------------------------------------------------------

    def adopt(self, tx: Tables, path: str, copy: Copy) -> str:
        """Orphan bytes, confirmed in `tx`: adopted as a PUT would store them, removed as the
        leftover of a DELETE, or quarantined when their name clashes with registered files."""
        repair = self._adopt(tx, path, copy)
        _log_repairs(path, {"orphan" if copy.area == "files" else "orphan-cache": repair})
        return repair

    def _adopt(self, tx: Tables, path: str, copy: Copy) -> str:
        entry = tx.queue.get(path)
        root = self.local.root if copy.area == "files" else self.local.cache_root
        if entry is not None and entry.op == "delete":
            # A DELETE was answered and dropped the row, then its process died before the
            # unlink; the remote still holds the copy until the queued delete runs.
            copy.file.unlink()
            prune_empty_dirs(copy.file.parent, root)
            return "removed: the leftover of a DELETE already answered (its remote delete " \
                   "is queued)"
        conflict = tx.files.namespace_conflict(path)
        if conflict is None and copy.area == "cache" and stat_key(
                self.local.path_of(path)) is not None:
            conflict = f"files/ holds other bytes for {path!r}"
        if conflict is not None:
            return f"moved to {self.quarantine(copy, path)}: {conflict}"
        if copy.area == "cache":
            self._cache_to_files(path)
        assert copy.sha256 is not None  # hashed: the expected size was its own
        # Recorded exactly as a PUT records its bytes (new version, upload queued after the
        # cool-down), in this transaction, which re-checked that no row exists.
        self.store.record_put(tx, path, copy.size, copy.sha256, guess_content_type(path),
                               copy.ino)
        return "adopted as a new file, as a PUT would store it (its upload is queued)"

    # -- moving bytes ----------------------------------------------------------------------------

    def quarantine(self, copy: Copy, path: str) -> str:
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


def _log_repairs(path: str, done: dict[str, str]) -> None:
    """One line per repair made (the report says the same, on stdout)."""
    for kind, repair in done.items():
        logs.event(log, "verify.repaired", "verify: {path!r} ({kind}): {repair}",
                   level=logging.WARNING, path=path, kind=kind, repair=repair)
