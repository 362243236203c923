"""The diagnosis, and nothing else: given a row and what was seen of its bytes (on the disk, in
the cache index, in the remote it records), which findings it has.

Pure: no I/O happens here, no clock is read, no registry is asked. Everything is a value the
caller gathered (`scan.py` on the disk, `remote.py` in the remotes), so the same verdict can be
reached again inside the confirming transaction from fresh looks, and tested without a data
directory. The values of what was seen (`Copy`, `Cloud`) are defined here for that reason.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Literal

from .. import paths
from ..cache.reconcile import _is_utf8
from ..errors import BadPath
from ..registry import CacheEntry, FileRecord
from ..remote import RemoteObject
from ..stats import size_text

REMOTE_KINDS = frozenset({"remote-missing", "remote-different"})


@dataclasses.dataclass(frozen=True)
class Copy:
    """One file of local bytes as found: enough of its stat to tell it is still the same file,
    and its SHA-256 (None: not hashed, its size already differs from the row's)."""

    file: Path
    area: str  # "files" | "cache"
    ino: int
    size: int
    mtime_ns: int
    sha256: str | None

    def good(self, row: FileRecord) -> bool:
        return self.size == row.size and self.sha256 == row.sha256

    def damage(self, row: FileRecord) -> str:
        if self.size != row.size:
            return f"{self.area}/ holds {self.size:,} bytes, the registry records {row.size:,}"
        return (f"the SHA-256 of the bytes in {self.area}/ is {self.sha256}, the registry "
                f"records {row.sha256}")


def good(copy: Copy | None, row: FileRecord) -> bool:
    return copy is not None and copy.good(row)


class _Unchecked(enum.Enum):
    TOKEN = 0


UNCHECKED = _Unchecked.TOKEN
# What the remote a row records holds at its path: an object, None (nothing), or UNCHECKED (not
# asked: no --remote, or a remote the config does not name).
Cloud = RemoteObject | None | Literal[_Unchecked.TOKEN]


def diagnose(row: FileRecord, f: Copy | None, c: Copy | None, entry: CacheEntry | None,
             cloud: Cloud, named: str | None = None) -> list[tuple[str, str]]:
    """What is wrong with one row, as (kind, detail) pairs: a pure function of what was seen
    (`f`: its bytes in files/, `c`: in cache/, `entry`: its cache index row, `cloud`: what its
    remote holds). `named`: the remote the row records, to name in the details when several
    are configured."""
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
        elif good(c, row) and not indexed:
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


def doubts_remote(row: FileRecord, f: Copy | None, c: Copy | None, entry: CacheEntry | None,
                  cloud: Cloud) -> bool:
    """Whether the diagnosis has a remote finding (remote-missing, remote-different)."""
    return bool({kind for kind, _ in diagnose(row, f, c, entry, cloud)} & REMOTE_KINDS)


def name_problem(path: str) -> str | None:
    """Why `path`, a name found on disk, cannot be a file's path as it is (None: it can)."""
    if not _is_utf8(path):
        return "not UTF-8"
    try:
        if paths.normalize(path) != path:
            return "not in Unicode NFC form"
    except BadPath as exc:
        return exc.detail
    return None
