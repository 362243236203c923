"""Crash recovery: what a PUT or a DELETE left half done (see store.py for the two halves).

At start (`at_start`, when no other process uses the data directory): this node's queue leases
are cleared (their holders are gone), every intent is finished, and temp files no intent names
are removed. While the node runs (`interrupted`, from the cluster's sweeper): the PUTs whose
commit the registry lost after their rename, as a restart would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from . import logs
from .fsutil import hash_file
from .registry import Intent, Tables

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("filestore")


def at_start(store: Store) -> None:
    """Only when no other process uses the data directory: this node's leases and intents
    are left by processes that are gone."""
    with store.registry.transaction() as tx:
        tx.queue.clear_leases()  # their holders are gone
    if store.local.static is not None:
        store.local.static.clear()  # a power loss may have lost an unlink (static.py)
    pending = store.registry.read.intents.all()
    for intent in pending:
        finish(store, intent)
    referenced = {intent.tmp for intent in pending}
    for tmp in store.local.temp_files():
        if str(tmp) not in referenced:
            tmp.unlink(missing_ok=True)
            logs.event(log, "recovery.temp_removed", "recovery: removed an unfinished "
                       "upload body {file}", file=tmp.name)


def interrupted(store: Store) -> int:
    """What start-up recovery would do, while the node runs, for the writes an outage of the
    registry cut (until then reads of the path wait on the intent): the PUTs whose temp
    file is gone (renamed into place but not recorded, or removed with the PUT's failure),
    and the DELETEs whose row went but whose second transaction did not come. Finishing a
    DELETE another process is finishing right now is harmless: both steps are idempotent.
    How many."""
    done = 0
    for intent in store.registry.read.intents.all():
        if intent.op == "delete" or not Path(intent.tmp).exists():
            done += finish(store, intent)
    return done


def finish(store: Store, intent: Intent) -> bool:
    """Finish `intent`, if it is still there once this holds the registry's write lock (a
    PUT of another process renames and commits under that lock, so none is half done
    then); whether it was."""
    final = store.local.path_of(intent.path)
    # Hashed before the lock (a large file is not read under it), its inode checked again
    # under it: nothing else renames over the path while the lock is held.
    proven = _installed(final, intent) if intent.op == "put" else None
    with store.registry.transaction() as tx:
        if not any(i.id == intent.id for i in tx.intents.for_path(intent.path)):
            return False  # finished meanwhile, by its PUT or another recovery
        if intent.op == "delete":
            # The row went, the bytes may not have: finish, unless a PUT made it anew.
            if tx.files.get(intent.path) is None:
                store.local.remove(intent.path)
            tx.intents.remove(intent.id)
            logs.event(log, "recovery.delete_finished", "recovery: finished the DELETE of "
                       "{path!r} a crash or an outage of the registry interrupted",
                       path=intent.path)
            return True
        tmp = Path(intent.tmp)
        if tmp.exists():
            tmp.unlink()  # never renamed: the PUT was not acknowledged
            logs.event(log, "recovery.temp_removed", "recovery: removed the body of an "
                       "unacknowledged PUT of {path!r} ({file})", path=intent.path,
                       file=tmp.name)
        elif final.exists() and (proven is None or _inode(final) != proven):
            # The temp file went with its PUT's failure before any rename (an outage cut the
            # transaction and the intent's removal too): the bytes there are older, whatever
            # row names them, and stay as they are.
            logs.event(log, "recovery.not_installed", "recovery: dropped the intent of an "
                       "unacknowledged PUT of {path!r}, never installed", path=intent.path)
        elif final.exists() and store.shared and not _still_ours(store, tx, intent.path):
            # Renamed, not recorded, and since then another node's change of the path was
            # acknowledged (a PUT there, a DELETE): it wins; this PUT never was acknowledged.
            store.local.remove_local(intent.path)
            logs.event(log, "recovery.superseded", "recovery: dropped the unacknowledged PUT "
                       "of {path!r}: another node changed the path since", path=intent.path)
        elif final.exists():
            # Renamed, not recorded: the bytes on disk are the intent's; record them.
            store.record_put(tx, intent.path, intent.size, intent.sha256,
                             intent.content_type, _inode(final))
            logs.event(log, "recovery.recorded", "recovery: recorded {path!r} ({size:,} "
                       "bytes), installed just before a crash", level=logging.WARNING,
                       path=intent.path, size=intent.size)
        tx.intents.remove(intent.id)
        return True


def _installed(final: Path, intent: Intent) -> int | None:
    """The inode of `final` if it holds the intent's very bytes (its size, then its
    SHA-256), else None: a rename of the intent's temp file put them there."""
    try:
        seen = final.stat()
        if seen.st_size != intent.size or hash_file(final)[1] != intent.sha256:
            return None
        return seen.st_ino if _inode(final) == seen.st_ino else None  # not replaced meanwhile
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _inode(path: Path) -> int:
    return path.stat().st_ino


def _still_ours(store: Store, tx: Tables, path: str) -> bool:
    """Whether the path's row is still this node's: the rename replaced the bytes it names,
    so they must be recorded. A row gone, or held by another node, came from a change on
    another node after the cut PUT (this node's own later PUTs settle its intents)."""
    record = tx.files.get(path)
    return record is not None and store.holds(record)
