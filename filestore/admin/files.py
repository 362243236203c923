"""Where each file is, in words: the state the files view and `GET /admin/api/files/...` show.

A file's place is spread over three tables (the file's row, its queue row, its cache entry) and
the disk (a keep-local copy); this module joins them for one page of files at a time, by primary
key lookups, so the files view costs the same in a store of a million files as in one of ten.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..local import LocalStore
from ..registry import CacheEntry, Entry, FileRecord, Tables, in_flight

# Every action the page offers on a file, in the order it shows them.
ACTIONS = ("upload", "local", "evict", "retry", "delete")


@dataclasses.dataclass(frozen=True)
class FileState:
    record: FileRecord
    state: str  # local, queued, uploading, failed, deleting-remote, cloud, cached, kept
    label: str  # the state for people: "queued: uploads in 4m 10s"
    entry: Entry | None
    cache: CacheEntry | None
    error: str | None
    actions: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        record, entry, now = self.record, self.entry, time.time()
        return {
            **record.public(),
            "version": record.version,
            "holder": record.holder,  # the node with its local bytes ("": a single node)
            "replica": record.replica,  # the other node with a copy (cluster.replicas)
            "remote": record.remote,
            "state": self.state,
            "label": self.label,
            "error": self.error,
            "actions": list(self.actions),
            "queue": None if entry is None else {
                "op": entry.op, "state": entry.state, "due": entry.not_before,
                "attempts": entry.attempts, "in_flight": in_flight(entry, now),
                "last_error": entry.last_error,
            },
            "cache": None if self.cache is None else {
                "size": self.cache.size, "last_access": self.cache.last_access,
            },
        }


def describe(tx: Tables, local: LocalStore,
             records: list[FileRecord]) -> list[FileState]:
    """The states of `records` (a page of them)."""
    now = time.time()
    return [_state(r, tx.queue.get(r.path), tx.cache.get(r.path), local, now)
            for r in records]


def _state(record: FileRecord, entry: Entry | None, cache: CacheEntry | None,
           local: LocalStore, now: float) -> FileState:
    error = (entry.last_error if entry is not None else None) or None
    if record.location == "remote":
        kept = local.path_of(record.path).is_file()
        if kept:
            state, label = "kept", "in the cloud, and kept local"
        elif cache is not None:
            state, label = "cached", "in the cloud, cached here"
        else:
            state, label = "cloud", "in the cloud"
        actions = ["local", *(["evict"] if cache is not None else []), "delete"]
        return FileState(record, state, label, entry, cache, None, tuple(actions))
    actions = ["upload"]
    if entry is None:
        state, label = "local", "local only, not queued"
    elif entry.op == "delete":
        state, label = "deleting-remote", "local; the older cloud copy is being deleted"
    elif in_flight(entry, now):
        state, label, actions = "uploading", "uploading now", []
    elif entry.state == "failed":
        state, label = "failed", f"upload failed after {entry.attempts} attempts"
        actions.append("retry")
    elif entry.not_before > now:
        state = "queued"
        label = f"queued: uploads in {_duration(entry.not_before - now)}"
    else:
        state, label = "queued", "queued: uploads next"
    return FileState(record, state, label, entry, cache, error, (*actions, "delete"))


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.999)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"
