"""`filestore import DIR`: adopt an existing directory tree into the store.

Each regular file below DIR becomes the file `PREFIX + its relative path`: copied into a temp file
and hashed in one pass (1 MiB blocks), then installed and recorded exactly as a PUT is (intent,
one transaction, its upload queued after the cool-down), so a crash or Ctrl-C at any moment
leaves every file either imported whole or not at all, and the source tree is only read.

Resumable: a file whose path is already registered with the same size is taken as imported and
skipped, so running the command again after an interruption continues where it stopped. What
cannot be taken is reported and skipped: names no path may have, symlinks, unreadable files.

With `move`, a source file is deleted once the store holds its bytes: after the transaction that
records them committed (the bytes and the record are durable then), and only if the source did not
change while it was copied. A crash between the two leaves the source; the next run finds the file
registered, checks the source's SHA-256 against the record, and deletes it then. So a byte is never
deleted before the store holds it, and no intent is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from . import paths
from .errors import FilestoreError, InsufficientStorage
from .fsutil import hash_file
from .local import Received
from .store import Store

# Takes a copy of a received body to another node; the node's name (`cluster.replicas`).
Replicate = Callable[[str, Received], str]


@dataclasses.dataclass
class ImportReport:
    imported: int = 0
    bytes: int = 0
    already: int = 0  # registered with the same size: imported by an earlier run
    moved: int = 0  # sources deleted (with `move`) once the store held their bytes
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Candidate:
    source: Path
    relative: str  # "/"-separated, as found (not yet validated)
    size: int


def candidates(root: Path, report: ImportReport) -> Iterator[Candidate]:
    """The regular files below `root` in a stable order; anything else is reported. So is a
    name that spells another one differently (NFC and NFD forms of "é"): paths are stored in
    NFC, so both would become one file, the second replacing the first (and, with `move`,
    both sources deleted). The first found is taken; the other is skipped, its source kept."""
    spellings: dict[str, str] = {}  # NFC form -> the name found first
    for directory, dirs, names in os.walk(root):  # does not follow symlinked directories
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            full = Path(directory, name)
            relative = full.relative_to(root).as_posix()
            try:
                info = full.lstat()
            except OSError as exc:
                report.problems.append(f"{relative}: {exc.strerror}")
                continue
            if not stat.S_ISREG(info.st_mode):
                report.problems.append(f"{relative}: not a regular file (a symlink or device)")
                continue
            first = spellings.setdefault(unicodedata.normalize("NFC", relative), relative)
            if first != relative:
                report.problems.append(f"{relative}: the same name as {first} once "
                                       "Unicode-normalised (NFC), so it would replace it; "
                                       "the source is kept")
            else:
                yield Candidate(full, relative, info.st_size)


def import_one(store: Store, candidate: Candidate, prefix: str, report: ImportReport,
               move: bool = False, replicate: Replicate | None = None) -> None:
    """Import one file as `prefix` + its relative path (`prefix` is "" or ends with "/");
    with `move`, delete the source once the store holds its bytes; with `replicate`
    (`cluster.replicas = 1`), recorded only once another node holds a copy, as a PUT."""
    try:
        path = paths.normalize(prefix + candidate.relative)
        existing = store.registry.read.files.get(path)
        if existing is not None and existing.size == candidate.size:
            report.already += 1
            if move:
                if hash_file(candidate.source)[1] == existing.sha256:
                    _remove_source(candidate, report)
                else:
                    report.problems.append(f"{candidate.relative}: the store holds other bytes "
                                           f"under {path!r}; the source is kept")
            return
        before = candidate.source.stat()
        received = store.local.copy_in(candidate.source, store.settings.storage.max_upload_size)
        try:
            replica = replicate(path, received) if replicate is not None else ""
        except BaseException:
            store.local.discard(received)
            raise
        record = store.put_received(path, received, replica)
        if move:
            after = candidate.source.stat()
            unchanged = (before.st_size, before.st_mtime_ns, before.st_ino) == \
                (after.st_size, after.st_mtime_ns, after.st_ino)
            if unchanged and record.sha256 == received.sha256:
                _remove_source(candidate, report)
            else:
                report.problems.append(f"{candidate.relative}: changed while it was imported; "
                                       "the source is kept")
    except InsufficientStorage:
        raise  # every later file would fail the same way: stop here
    except FilestoreError as exc:
        report.problems.append(f"{candidate.relative}: {exc.detail}")
        return
    except OSError as exc:
        report.problems.append(f"{candidate.relative}: {exc.strerror or exc}")
        return
    report.imported += 1
    report.bytes += candidate.size


def _remove_source(candidate: Candidate, report: ImportReport) -> None:
    candidate.source.unlink()
    report.moved += 1


def prune_empty(root: Path) -> None:
    """Remove the directories below `root` that a move left empty (never `root` itself)."""
    for directory, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if Path(directory) != root:
            with contextlib.suppress(OSError):  # not empty: something was kept
                os.rmdir(directory)
