"""Warming: downloading into the cache the files under a prefix that only the cloud has.

A warm runs the read-through cache's own fills (`readthrough.py`), so it shares their single
flight: a file a GET is downloading (in this process, or in another one on the data directory,
through the fill lock) is followed, not fetched again, and a GET of a file being warmed follows
the warm's download. A server warms with its own read-through cache (`POST
/admin/api/cache/warm`, in the background); `filestore cache warm` builds one for the command,
with a task group of its own, whether or not a server runs.

- What it takes: files under the prefix recorded in the cloud with no cache entry, and whose
  bytes are not kept local (`plan`: an index range, page by page; memory stays at one page).
- Resumable: every file is installed as soon as it is verified, so a rerun (or the run after a
  Ctrl-C, which stops the downloads running and leaves no partial file) takes only the rest.
- Within `cache.max_size`: the room is what the pinned bytes leave of it (pinned entries are
  never evicted). Files beyond that room are skipped, not downloaded to evict one another; with
  no room at all the warm stops at once and says why.
- `concurrency` downloads at a time; each at the node's `cache.download_bandwidth`.

The one place outside `readthrough.py` that calls into it beyond `open`: `_start` (a fill, run
here or followed, without counting a miss or streaming a response) and `_remote_for`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .. import logs, paths
from ..errors import FilestoreError
from ..registry import FileRecord, Tables
from ..remote import connected_remotes
from ..responses import LocalBytes
from ..stats import size_text
from ..store import Store
from .readthrough import ReadThrough

log = logging.getLogger("filestore.cache")

_PAGE = 500
ERRORS_KEPT = 10  # a report names the first errors, and counts them all


@dataclasses.dataclass(frozen=True)
class WarmPlan:
    prefix: str
    files: int  # what only the cloud has under the prefix
    bytes: int
    room: int  # bytes the cache can take: cache.max_size less the pinned bytes

    def public(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fits": self.bytes <= self.room}


@dataclasses.dataclass
class WarmReport:
    prefix: str
    files: int = 0  # planned (as `WarmPlan`)
    bytes: int = 0
    room: int = 0
    warmed: int = 0  # in the cache now (downloaded here, or a download followed)
    warmed_bytes: int = 0
    passed: int = 0  # nothing to do any more: cached, changed or deleted meanwhile
    passed_bytes: int = 0
    skipped: int = 0  # no room for them (see `stopped`)
    skipped_bytes: int = 0
    failed: int = 0
    failed_bytes: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)  # the first ERRORS_KEPT
    stopped: str | None = None  # why some (or all) could not be warmed

    @property
    def handled_bytes(self) -> int:
        return self.warmed_bytes + self.passed_bytes + self.skipped_bytes + self.failed_bytes

    @property
    def handled(self) -> int:
        return self.warmed + self.passed + self.skipped + self.failed

    @property
    def clean(self) -> bool:
        return not (self.failed or self.skipped or self.stopped)

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        line = (f"warm {self.prefix!r}: {self.warmed:,} files warmed "
                f"({size_text(self.warmed_bytes)}), {self.passed:,} cached meanwhile, "
                f"{self.skipped:,} skipped ({size_text(self.skipped_bytes)}), "
                f"{self.failed:,} failed")
        return line + (f"; {self.stopped}" if self.stopped else "")

    def _error(self, record: FileRecord, detail: str) -> None:
        self.failed, self.failed_bytes = self.failed + 1, self.failed_bytes + record.size
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(f"{record.path}: {detail}")


Progress = Callable[[WarmReport], None]


def quiet(report: WarmReport) -> None:
    """A progress that shows nothing."""


def _kept_local(store: Store, path: str) -> bool:
    return store.local.path_of(path).exists()


def missing(tx: Tables, store: Store, prefix: str) -> Iterator[FileRecord]:
    """The files a warm of `prefix` takes, in path order, a page at a time."""
    after = ""
    while True:
        page = tx.cache.missing_under(prefix, after, _PAGE)
        for record in page:
            if not _kept_local(store, record.path):
                yield record
        if len(page) < _PAGE:
            return
        after = page[-1].path


def plan(store: Store, prefix: str) -> WarmPlan:
    """What a warm of `prefix` would download, and the room for it. Blocking (a reader of its
    own: run it in a thread)."""
    reader = store.registry.open_reader()
    try:
        files = size = 0
        for record in missing(reader, store, prefix):
            files, size = files + 1, size + record.size
        pinned = reader.counters.get("cache.pinned.bytes")
    finally:
        reader.close()
    return WarmPlan(prefix, files, size, max(store.settings.cache.max_size - pinned, 0))


async def run(cache: ReadThrough, prefix: str, concurrency: int,
              progress: Progress = quiet,
              planned: WarmPlan | None = None) -> WarmReport:
    """Warm `prefix` through `cache`, `concurrency` downloads at a time, until every file is
    handled; `progress` sees the report after each file."""
    if planned is None:
        planned = await anyio.to_thread.run_sync(plan, cache.store, prefix)
    report = WarmReport(prefix, planned.files, planned.bytes, planned.room)
    max_size = cache.store.settings.cache.max_size
    if planned.files and planned.room == 0:
        report.stopped = (f"the cache is full of pinned bytes (cache.max_size "
                          f"{size_text(max_size)}): nothing can be warmed; unpin a prefix or "
                          "raise cache.max_size")
        report.skipped, report.skipped_bytes = planned.files, planned.bytes
        return report
    taken = [0]  # bytes of the files taken on so far (what the room must hold)
    send, receive = anyio.create_memory_object_stream[FileRecord](concurrency)

    async def worker(records: MemoryObjectReceiveStream[FileRecord]) -> None:
        async with records:
            async for record in records:
                await _one(cache, record, report, taken)
                progress(report)

    async with anyio.create_task_group() as tg:
        for _ in range(max(concurrency, 1)):
            tg.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for record in missing(cache.store.registry.read, cache.store, prefix):
                await send.send(record)
    if report.skipped and not report.stopped:
        report.stopped = (f"{report.skipped:,} files ({size_text(report.skipped_bytes)}) did "
                          f"not fit: the cache has room for {size_text(planned.room)} "
                          f"(cache.max_size {size_text(max_size)}, less the pinned bytes)")
    return report


async def _one(cache: ReadThrough, record: FileRecord, report: WarmReport,
               taken: list[int]) -> None:
    tx = cache.store.registry.read
    current = tx.files.get(record.path)
    if (current is None or current.version != record.version or current.location != "remote"
            or tx.cache.get(record.path) is not None or _kept_local(cache.store, record.path)):
        report.passed, report.passed_bytes = report.passed + 1, report.passed_bytes + record.size
        return
    if taken[0] + record.size > report.room:
        report.skipped, report.skipped_bytes = (report.skipped + 1,
                                                report.skipped_bytes + record.size)
        return
    taken[0] += record.size
    try:
        fill = await cache._start(record, cache._source_for(record))
        if isinstance(fill, LocalBytes):  # another process installed it just now
            fill.close()
        elif fill is not None:
            while not fill.finished:
                await fill.changed()
            if fill.error is not None:
                raise fill.error
    except (FilestoreError, OSError) as exc:  # this file's: the others go on
        taken[0] -= record.size
        report._error(record, exc.detail if isinstance(exc, FilestoreError) else str(exc))
        return
    if fill is None:  # no room could be made: what is left is being read
        taken[0] -= record.size
        report.skipped, report.skipped_bytes = (report.skipped + 1,
                                                report.skipped_bytes + record.size)
        return
    report.warmed, report.warmed_bytes = report.warmed + 1, report.warmed_bytes + record.size


async def here(store: Store, cache: ReadThrough | None, prefix: str, concurrency: int,
               progress: Progress = quiet) -> WarmReport:
    """Warm `prefix` in this process: through `cache` (a server's), or, for a command, a
    read-through cache built for the call, whose fills all end (installed) before it returns."""
    prefix = paths.normalize_prefix(prefix)
    if cache is not None:
        return await run(cache, prefix, concurrency, progress)
    async with connected_remotes(store.settings) as remotes:
        async with anyio.create_task_group() as tg:
            own = ReadThrough(store, remotes, tg)
            report = await run(own, prefix, concurrency, progress)
        with anyio.CancelScope(shield=True):
            await own.usage.flush()  # the fills' statistics
    return report


async def start(cache: ReadThrough, prefix: str) -> WarmPlan:
    """Start warming `prefix` in the background of a server (its task group), as many
    downloads at a time as `upload.concurrency`; what it will take. The outcome is logged
    (`cache.warmed`)."""
    prefix = paths.normalize_prefix(prefix)
    concurrency = cache.store.settings.upload.concurrency
    planned = await anyio.to_thread.run_sync(plan, cache.store, prefix)

    async def background() -> None:
        try:
            report = await run(cache, prefix, concurrency, planned=planned)
        except Exception as exc:
            log.error("cache: warming %r failed: %s: %s", prefix, type(exc).__name__, exc)
            return
        logs.event(log, "cache.warmed", "cache: {text}", prefix=prefix, text=report.text(),
                   level=logging.INFO if report.clean else logging.WARNING,
                   files=report.warmed, bytes=report.warmed_bytes, failed=report.failed,
                   skipped=report.skipped)

    cache.task_group.start_soon(background)
    return planned
