"""Move everything to the cloud, or everything back: the jobs behind the admin page's two buttons.

**Move to the cloud** makes the upload of every local file due now. It scans the files in path
order, a page per transaction, and tags each queue row it makes due with the job; the queue's
workers do the uploads as usual, and triggers count each tagged row that leaves the queue as done
(with its bytes when it was uploaded). The job is done when no tagged row is still pending.

**Move to local** downloads every file only the cloud holds into `files/`, verifies its SHA-256,
and only then marks it local; with `delete_remote` the cloud copy is deleted afterwards, through
the queue, so the delete happens only once the local copy is recorded. Bytes already on the disk
(a cache entry, a keep-local copy) are verified and moved by rename instead of downloaded.

A job is leased by the process that runs it (see `registry/jobs.py`), resumes after its cursor
when it is taken up again, and stops at its next step once cancelled.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .. import logs
from ..config import DEFAULT_REMOTE
from ..errors import (
    Conflict,
    FilestoreError,
    InsufficientStorage,
    NotFound,
    RegistryUnavailable,
    RemoteError,
    RemoteIntegrityError,
)
from ..fsutil import hash_file
from ..local import Received
from ..registry import JOB_LEASE_SECONDS, FileRecord, Job, Tables
from ..stats import size_text
from . import purge

if TYPE_CHECKING:
    from ..remote import Remote
    from ..store import Store

log = logging.getLogger("filestore.jobs")

PAGE = 500
POLL_SECONDS = 1.0
MOVES = ("move-to-cloud", "move-to-local")  # the other job kind: purge.py
PAUSED = ("uploads are disabled (upload.enabled = false): the job waits until they are "
          "enabled again, or until it is cancelled")


# -- starting a job ------------------------------------------------------------------------------

def start(store: Store, kind: str, delete_remote: bool = False) -> Job:
    """Create a move job, after the checks that can refuse it at once."""
    if kind not in MOVES:
        raise Conflict(f"unknown move {kind!r} (known: {', '.join(MOVES)}; an account is "
                       "purged through DELETE /admin/api/accounts/ID?purge=true)")
    counters = store.registry.read.counters.all()
    now = time.time()
    with store.registry.transaction() as tx:
        if kind == "move-to-cloud":
            if not store.settings.upload.enabled:
                raise Conflict("uploads are disabled (upload.enabled = false): enable them "
                               "first, or nothing would move")
            return tx.jobs.create(kind, {}, 0, 0, now)
        _check_room(store, counters)
        # What there is to move, as the counters say now: the scan downloads as it goes, so
        # the page shows progress against this from the start.
        return tx.jobs.create(kind, {"delete_remote": delete_remote},
                           counters.get("files.remote", 0), counters.get("bytes.remote", 0), now)


def _check_room(store: Store, counters: dict[str, int]) -> None:
    """Refuse a move to local that cannot fit: what the cloud alone holds must fit above
    `storage.min_free` (cache entries move by rename and need no room)."""
    needed = max(counters.get("bytes.remote", 0) - counters.get("cache.bytes", 0), 0)
    free = shutil.disk_usage(store.local.root).free - store.settings.storage.min_free
    if needed > free:
        raise InsufficientStorage(
            f"moving everything to local needs {size_text(needed)} of disk; only "
            f"{size_text(max(free, 0))} is free above storage.min_free "
            f"({size_text(store.settings.storage.min_free)})"
        )


def cancel(store: Store, job_id: int) -> Job:
    """Cancel the job, then give back what it queued, a batch per transaction so that other
    writers are not held up for long (the job's figures no longer move: it ended)."""
    now = time.time()
    with store.registry.transaction() as tx:
        job = tx.jobs.cancel(job_id, now)
    while True:
        with store.registry.transaction() as tx:
            if not tx.queue.release_job(job_id, now):
                return job


# -- one file back to local ----------------------------------------------------------------------

async def bring_local(store: Store, remotes: dict[str, Remote], path: str,
                      delete_remote: bool = False) -> bool:
    """Make a file that is in the cloud local again; whether it did (False: it was local).

    The bytes come from the disk when a verified copy is there (cache entry or keep-local copy,
    re-hashed now), else from the cloud; either way they are checked against the recorded
    SHA-256 before the row says local. A PUT or DELETE meanwhile wins: nothing is recorded."""
    record = store.lookup(path)
    if record.location != "remote":
        return False
    received = await anyio.to_thread.run_sync(_copy_on_disk, store, record)
    if received is None:
        remote = remotes.get(record.remote or DEFAULT_REMOTE)
        if remote is None:
            raise RemoteError(f"{path!r} is in remote {record.remote!r}, which is not "
                              "configured")
        store.local.check_room(record.size)
        received = await store.local.receive(remote.get(path), record.size)
    try:
        if received.size != record.size or received.sha256 != record.sha256:
            raise RemoteIntegrityError(
                f"{path!r}: the copy read has {received.size} bytes with SHA-256 "
                f"{received.sha256}, the registry records {record.size} bytes with "
                f"{record.sha256}"
            )
        moved = await anyio.to_thread.run_sync(_install_local, store, record, received,
                                               delete_remote)
    except BaseException:
        store.local.discard(received)
        raise
    store.events.changed()
    return moved


def _copy_on_disk(store: Store, record: FileRecord) -> Received | None:
    """A verified temp link to bytes of `record` already on the disk, or None. A hard link
    keeps the bytes even if the cache evicts its entry meanwhile; hashing them again proves
    they are still the recorded ones."""
    for candidate in store.local.candidates(record.path):
        tmp = store.local.tmp_dir / f"move-{uuid.uuid4().hex}"
        try:
            os.link(candidate, tmp)
        except (FileNotFoundError, NotADirectoryError):
            continue
        size, sha256 = hash_file(tmp)
        if size == record.size and sha256 == record.sha256:
            return Received(tmp, size, sha256, "")
        tmp.unlink()
        logs.event(log, "move.bad_local_copy", "{path!r}: the bytes in {area} do not match the "
                   "registry; reading the cloud copy", level=logging.WARNING, path=record.path,
                   area=candidate.parent.name)
    return None


def _install_local(store: Store, record: FileRecord, received: Received,
                   delete_remote: bool) -> bool:
    registry = store.registry
    with registry.transaction() as tx:
        current = tx.files.get(record.path)
        if current is None or current.version != record.version or current.location != "remote":
            store.local.discard(received)
            return False
        inode = os.stat(received.tmp).st_ino
        store.local.install(received.tmp, record.path)  # also drops the cache area's copy
        # A link to the keep-local copy itself: rename(2) between two links of one inode
        # does nothing, and the temp link would keep the bytes alive.
        received.tmp.unlink(missing_ok=True)
        tx.cache.remove(record.path)
        tx.files.mark_local(record.path, inode)
        if delete_remote and current.remote is not None:
            now = time.time()
            tx.queue.schedule(record.path, "delete", current.version, current.remote,
                             now, now)
        return True


# -- the runner ----------------------------------------------------------------------------------

class JobLost(Exception):
    """The job was cancelled, or another process took it over: stop working on it."""


def outage_in(exc: BaseException) -> RegistryUnavailable | None:
    """The `RegistryUnavailable` that `exc` is, or one a task group's `exc` holds; None if
    neither (the job's tasks run in task groups, so the registry's outage may come grouped)."""
    if isinstance(exc, RegistryUnavailable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = outage_in(inner)
            if found is not None:
                return found
    return None


class MoveRunner:
    """Takes up the active move job (from this process, another one or the CLI) and runs it."""

    def __init__(self, store: Store, remotes: dict[str, Remote], owner: str,
                 wake_queue: Callable[[], None]) -> None:
        self.store = store
        self.registry = store.registry
        self.remotes = remotes
        self.owner = owner
        self.wake_queue = wake_queue
        self._wakeup = anyio.Event()
        self._thread_reader: Tables | None = None
        self._full: InsufficientStorage | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def close(self) -> None:
        """Close the worker threads' read connection (after the runner stopped)."""
        if self._thread_reader is not None:
            self._thread_reader.close()
            self._thread_reader = None

    def _reader(self) -> Tables:
        """A read connection for this worker thread (the registry's own is the loop's)."""
        if self._thread_reader is None:
            self._thread_reader = self.registry.open_reader()
        return self._thread_reader

    async def run(self) -> None:
        """Forever: look for a job each second (or when woken) and run it. The registry's
        server away is one warning per outage (and one line when it is back), not a traceback
        a second; a job it cut off stays active and is taken up again, here or elsewhere."""
        away = logs.Failing(log, "move jobs: looking for work")
        while True:
            self._wakeup = anyio.Event()
            ran = False
            try:
                ran = await self._run_next()
            except Exception as exc:
                outage = outage_in(exc)
                if outage is None:
                    log.exception("move jobs: looking for work failed")
                else:
                    away.failed(outage)
            else:
                away.ok()
            if ran:
                continue
            with anyio.move_on_after(POLL_SECONDS):
                await self._wakeup.wait()

    async def _run_next(self) -> bool:
        """Run the active job if it is free (its lease ran out, or it is this runner's own,
        left by an outage); whether there was one."""
        # A read first: the write lock is taken only when there is a job to take.
        waiting = self.registry.read.jobs.active()
        free = waiting is not None and ((waiting.leased_until or 0) <= time.time()
                                        or waiting.lease_owner == self.owner)
        job = await anyio.to_thread.run_sync(self.lease) if free else None
        if job is None:
            return False
        await self.run_job(job)
        return True

    def lease(self) -> Job | None:
        """Take the active job, if no other process holds it."""
        with self.registry.transaction() as tx:
            return tx.jobs.lease(self.owner, time.time())

    async def run_job(self, job: Job) -> None:
        """Run `job` (leased by this runner) until it ends, is cancelled or is taken over."""
        resumed = bool(job.cursor)  # taken up again after a restart or from another process
        logs.event(log, "move.started", "job {job} ({kind}) running" + (" again" if resumed
                   else ""), job=job.id, kind=job.kind, resumed=resumed,
                   delete_remote=bool(job.option.get("delete_remote")))
        try:
            await self._work_on(job)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release, job.id)
            raise
        ended = self.registry.read.jobs.get(job.id)
        if ended.active:  # taken over by another process (its log says how it ends)
            logs.event(log, "move.stopped", "job {job} ({kind}) stopped here: another process "
                       "took it over", job=job.id, kind=job.kind, state=ended.state)
            return
        logs.event(log, "move.finished", "job {job} ({kind}) ended {state}: {files:,} files, "
                   "{bytes:,} bytes, {errors:,} errors", job=job.id, kind=job.kind,
                   level=logging.ERROR if ended.state == "failed" else logging.INFO,
                   state=ended.state, files=ended.done, bytes=ended.bytes, errors=ended.errors,
                   error=ended.last_error)

    def _release(self, job_id: int) -> None:
        with self.registry.transaction() as tx:
            tx.jobs.release(job_id, self.owner)

    async def _work_on(self, job: Job) -> None:
        """The job's work, with its lease kept. The registry's server away is no failure of the
        job: `RegistryUnavailable` comes out (alone, not in a group, when nothing else went
        wrong), and the job stays active, to be taken again once the registry answers."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease, job, tg.cancel_scope)
                try:
                    if job.kind == "move-to-cloud":
                        await self._to_cloud(job)
                    elif job.kind == "purge-account":
                        await purge.run(self, job)
                    else:
                        await self._to_local(job)
                except JobLost:
                    pass
                except Exception as exc:
                    if outage_in(exc) is not None:
                        raise
                    detail = exc.detail if isinstance(exc, FilestoreError) else f"{exc!r}"
                    # (`move.finished` says it, with the job's figures)
                    await anyio.to_thread.run_sync(self._finish, job, "failed", detail)
                tg.cancel_scope.cancel()
        except* RegistryUnavailable as group:  # from the work or from `_keep_lease`'s renewal
            found = outage_in(group)
            assert found is not None
            raise found from None

    async def _keep_lease(self, job: Job, scope: anyio.CancelScope) -> None:
        """Renew the lease; stop the job's work when it was cancelled or taken over."""
        while True:
            await anyio.sleep(JOB_LEASE_SECONDS / 6)
            if not await anyio.to_thread.run_sync(self._renew, job.id):
                scope.cancel()
                return

    async def wait(self) -> None:
        """Until something may have moved on (`wake`: the queue finished work, a job came)."""
        await self._wakeup.wait()
        self._wakeup = anyio.Event()

    def check_held(self, tx: Tables, job_id: int) -> None:
        """Stop the job's work (`JobLost`) once it was cancelled or taken over."""
        if not tx.jobs.holds(job_id, self.owner):
            raise JobLost

    def _renew(self, job_id: int) -> bool:
        with self.registry.transaction() as tx:
            if not tx.jobs.holds(job_id, self.owner):
                return False
            tx.jobs.renew(job_id, self.owner, time.time())
            return True

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        with self.registry.transaction() as tx:
            if tx.jobs.holds(job.id, self.owner):
                tx.jobs.finish(job.id, state, time.time(), error)

    # -- move to the cloud ---------------------------------------------------------------------

    async def _to_cloud(self, job: Job) -> None:
        cursor, scanned = job.cursor, bool(job.scanned)
        while not scanned:
            cursor, scanned = await anyio.to_thread.run_sync(self._queue_page, job.id, cursor)
            self.wake_queue()
        said_paused = False
        while True:
            state = await anyio.to_thread.run_sync(self._cloud_state, job.id)
            if state is not None:
                return
            if not self.store.settings.upload.enabled and not said_paused:
                # Turned off while the job runs: it waits, and the page says why.
                await anyio.to_thread.run_sync(self._note, job.id, PAUSED)
                said_paused = True
            with anyio.move_on_after(POLL_SECONDS):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()

    def _note(self, job_id: int, message: str) -> None:
        with self.registry.transaction() as tx:
            tx.jobs.progress(job_id, error=message, now=time.time())

    def _queue_page(self, job_id: int, after: str) -> tuple[str, bool]:
        """Make the next page's local files due now, tagged with the job."""
        now = time.time()
        with self.registry.transaction() as tx:
            if not tx.jobs.holds(job_id, self.owner):
                raise JobLost
            page = tx.files.page(after, PAGE)
            # Files the storage plan keeps local are not the job's to move.
            routes = {r.path: self.store.route(r.path, r.content_type) for r in page
                      if r.location == "local"}
            local = [r for r in page if r.path in routes and routes[r.path].upload]
            for record in local:
                tx.queue.upload_now(record.path, record.version,
                                   routes[record.path].remote, now, job_id)
            last = page[-1].path if page else after
            tx.jobs.scanned_to(job_id, last, files=len(local),
                            size=sum(r.size for r in local), finished=len(page) < PAGE, now=now)
            return last, len(page) < PAGE

    def _cloud_state(self, job_id: int) -> str | None:
        """Finish the job once none of its uploads is pending; its state then. The reader
        looks first: the write lock is taken only to finish."""
        if self._reader().queue.job_pending(job_id):
            return None
        with self.registry.transaction() as tx:
            if not tx.jobs.holds(job_id, self.owner):
                return "gone"
            if tx.queue.job_pending(job_id):
                return None
            tx.jobs.finish(job_id, "done", time.time())
            return "done"

    # -- move to local -------------------------------------------------------------------------

    async def _to_local(self, job: Job) -> None:
        delete_remote = bool(job.option.get("delete_remote"))
        cursor = job.cursor
        limiter = anyio.CapacityLimiter(self.store.settings.upload.concurrency)
        while True:
            page = self.registry.read.files.page(cursor, PAGE)
            remote = [r for r in page if r.location == "remote"]
            async with anyio.create_task_group() as tg:
                for record in remote:
                    tg.start_soon(self._one_local, job.id, record, delete_remote, limiter)
            if self._full is not None:
                full, self._full = self._full, None
                raise full
            cursor = page[-1].path if page else cursor
            done = len(page) < PAGE
            await anyio.to_thread.run_sync(self._scanned, job.id, cursor, done)
            if done:
                return

    async def _one_local(self, job_id: int, record: FileRecord, delete_remote: bool,
                         limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            if self._full is not None:
                return  # the disk filled up: the job stops after this page
            error = None
            try:
                if not await bring_local(self.store, self.remotes, record.path, delete_remote):
                    return  # local already (a PUT, or before a restart): nothing to count
            except NotFound:
                return  # deleted meanwhile: nothing to move
            except RegistryUnavailable:
                raise  # no failure of the file's: the job stops, and is taken up again
            except InsufficientStorage as exc:
                self._full = exc  # every later file would fail the same way
                error = exc.detail
            except FilestoreError as exc:
                error = exc.detail
            except OSError as exc:
                error = f"{record.path!r}: {exc.strerror or exc}"
            if error:
                logs.event(log, "move.file_failed", "job {job}: {error}", level=logging.WARNING,
                           path=record.path, job=job_id, error=error)
            await anyio.to_thread.run_sync(self._count, job_id, record.size, error)

    def _count(self, job_id: int, size: int, error: str | None) -> None:
        with self.registry.transaction() as tx:
            tx.jobs.progress(job_id, done=0 if error else 1, size=0 if error else size,
                          errors=1 if error else 0, error=error, now=time.time())

    def _scanned(self, job_id: int, cursor: str, finished: bool) -> None:
        """Keep the cursor; at the end, the totals become what was found and moved."""
        with self.registry.transaction() as tx:
            if not tx.jobs.holds(job_id, self.owner):
                raise JobLost
            now = time.time()
            tx.jobs.scanned_to(job_id, cursor, finished=finished, now=now)
            if finished:
                job = tx.jobs.get(job_id)
                # Without errors everything found was moved: 100%. With errors the estimate
                # stays, and the progress tells how much of it did not move.
                tx.jobs.set_totals(job_id, job.done + job.errors,
                                job.total_bytes if job.errors else job.bytes)
                tx.jobs.finish(job_id, "done", now)

