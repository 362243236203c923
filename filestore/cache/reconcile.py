"""Start-up repair of the cache area against its index, for what a crash can leave behind.

Run only when no other process uses the data directory. Partial fills need nothing here: they live
in tmp/, which recovery empties. What remains: index rows whose file is gone or has the wrong size
(dropped, with the file), and files the index does not know. Such a file is the bytes of an
uploaded file whose index row never committed (a crash between the move and the record, or a data
directory from before the index): if the registry says the file is in the cloud and the size
matches, it is adopted. The only bytes of a file not uploaded yet stay where they are, unindexed
(so never evicted). Anything else is removed. Work is done in batches, each re-checked inside
its own transaction, so fills and evictions may run meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from stat import S_ISREG

from ..errors import BadPath
from ..fsutil import prune_empty_dirs
from ..local import LocalStore
from ..registry import Registry

log = logging.getLogger("filestore.cache")

_BATCH = 1000


def reconcile(registry: Registry, local: LocalStore, *,
              adopt: bool = True) -> tuple[int, int, int]:
    """Repair the cache area: (rows dropped, files adopted, files removed). Blocking; memory
    stays at one batch however many entries there are. `adopt=False` (a registry nodes
    share): bytes with no entry of this node's are an older version's, superseded by a change
    on another node that took their entry with it, or a fill that never committed; none is
    adopted on its size, all go."""
    dropped = _drop_rows(registry, local)
    adopted = removed = 0
    batch: list[tuple[str, int]] = []
    for found in _walk(local.cache_root):
        batch.append(found)
        if len(batch) >= _BATCH:
            a, r = _settle_files(registry, local, batch, adopt)
            adopted, removed, batch = adopted + a, removed + r, []
    if batch:
        a, r = _settle_files(registry, local, batch, adopt)
        adopted, removed = adopted + a, removed + r
    if dropped or adopted or removed:
        log.warning("cache: start-up repair dropped %d index rows, adopted %d files and "
                    "removed %d", dropped, adopted, removed)
    return dropped, adopted, removed


def _is_utf8(name: str) -> bool:
    try:
        name.encode()  # os.walk hands back undecodable bytes as lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def _cached_size(local: LocalStore, path: str) -> int | None:
    try:
        return _size(local.cached_path_of(path))
    except BadPath:  # a symlink leading outside: never filestore's own
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return None


def _walk(root: Path) -> Iterable[tuple[str, int]]:
    """(path relative to `root`, size) of everything below `root` that is not a directory;
    the size of anything but a regular file (a symlink, say) is -1, which no entry has."""
    for directory, _, names in os.walk(root):  # never follows a symlink to a directory
        for name in names:
            full = os.path.join(directory, name)
            try:
                stat = os.lstat(full)
            except FileNotFoundError:
                continue
            yield os.path.relpath(full, root), stat.st_size if S_ISREG(stat.st_mode) else -1


def _drop_rows(registry: Registry, local: LocalStore) -> int:
    """Drop the rows whose file is missing or of another size, a page of rows a transaction
    (a file of the wrong size, now unindexed, goes with the walk)."""
    dropped, after = 0, ""
    while True:
        with registry.transaction() as tx:
            page = tx.cache.page(after, _BATCH)
            for entry in page:
                if _cached_size(local, entry.path) != entry.size:
                    tx.cache.remove(entry.path)
                    dropped += 1
        if len(page) < _BATCH:
            return dropped
        after = page[-1].path


def _settle_files(registry: Registry, local: LocalStore,
                  files: list[tuple[str, int]], adopt: bool) -> tuple[int, int]:
    adopted = removed = 0
    now = time.time()
    with registry.transaction() as tx:
        for path, size in files:
            # Found by the walk, so this name is below cache/ itself (no symlinked parent).
            cached = local.cache_root / path
            if not _is_utf8(path):  # never a path filestore stores
                cached.unlink(missing_ok=True)
                removed += 1
                continue
            if tx.cache.get(path) is not None:
                continue  # indexed (its size was checked above), or installed meanwhile
            record = tx.files.get(path)
            only_copy = (adopt and record is not None and record.size == size
                         and _size(cached) == size and _size(local.root / path) is None)
            if only_copy and record is not None and record.location == "remote":
                tx.cache.add(path, record.version, size, record.sha256, now)
                tx.files.set_inode(path, cached.stat().st_ino)
                adopted += 1
            elif only_copy:
                # Not uploaded yet (an interrupted move of an older layout): these are the only
                # bytes. They stay, unindexed and so never evicted; the upload reads them here.
                continue
            else:
                local.drop_static(path)
                cached.unlink(missing_ok=True)
                prune_empty_dirs(cached.parent, local.cache_root)
                removed += 1
    return adopted, removed
