"""The queue's workers: lease due rows, upload or delete remotely, record the outcome.

One dispatcher task per process leases due rows (`upload.concurrency` at a time) and starts a task
for each. It sleeps until the next row is due, or until `wake()` (a PUT or DELETE in this process,
or a finished task); never longer than `MAX_IDLE`, so rows of another, crashed process sharing the
data directory are taken over once their lease expires. A heartbeat renews the leases of work in
flight, so a long upload keeps its row while a dead process's rows come free.

Two settings shape when and how fast (both change at run time, see `bandwidth.py` and
`upload_window.py`): outside `upload.hours` the dispatcher leases nothing, uploads and remote
deletes alike, and sleeps until the next opening (or a wake-up: a settings change wakes it); every
upload reads its local file through the node's `upload.bandwidth` bucket.

Nothing is lost between the steps: the row is removed only in the transaction that records the
verified upload, and local bytes leave `files/` only in that same transaction (renamed into the
cache area, or kept in backup mode). A crash anywhere before it means the upload runs again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from .. import logs, metrics
from ..bandwidth import UPLOAD, PacedSource, node_bucket
from ..config import UploadSettings
from ..errors import RegistryUnavailable, RemoteError, RemoteUnavailable
from ..registry import Entry, Tables
from ..remote import Remote
from ..upload_window import window_of
from .retry import is_retryable, next_delay

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("filestore.queue")

LEASE_SECONDS = 60.0
MAX_IDLE = LEASE_SECONDS
SHARED_IDLE = 2.0


class QueueWorkers:
    def __init__(self, store: Store, remotes: dict[str, Remote]) -> None:
        self.store = store
        self.registry = store.registry
        self.remotes = remotes
        # "NODE:PID:RANDOM": a node starting again clears its own leases, never its peers'.
        self.owner = f"{store.settings.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The remote settings these remotes were opened with (see overrides.py): an upload
        # that began under older ones is not recorded, it goes again to the new remote. (Any
        # remote's change counts, an account's included: saves are rare, and an upload in
        # flight then only goes again.)
        self.remote_generation = store.settings_generation[1]
        self._in_flight: dict[str, Entry] = {}
        # An outage of the registry may have left leases of this owner outside `_in_flight`
        # (a release it cut, a lease whose answer it lost): all are released at the first
        # round the registry answers again, so their work goes again then, not when they run
        # out (`_release_stray`).
        self._stray_leases = False
        self._wakeup = anyio.Event()
        # When the dispatcher next looks at the queue, asleep (wall clock); inf: it is looking
        self._looks_at = math.inf
        # The node's upload cap, at the rate the settings in force name (read at every step).
        self.bandwidth = node_bucket(store.datadir.root, UPLOAD, lambda: self.settings.bandwidth)
        # What the upload window is asked about; a test sets another clock instead of waiting
        # for an hour of the day.
        self.clock: Callable[[], float] = time.time
        self._window_open = True  # as last seen, to log each opening and closing once

    @property
    def settings(self) -> UploadSettings:
        return self.store.settings.upload  # changed at run time from the admin page

    def wake(self, due: float | None = None) -> None:
        """Look at the queue now (called on the event loop's thread); `due`: the new work is
        due no sooner than then (wall clock), so a dispatcher that looks again by then anyway
        is left asleep. After a PUT its upload is usually minutes away, and each look is a
        registry read on the event loop's thread (a round trip with a shared registry, which
        the next request waited behind)."""
        if due is not None and due >= self._looks_at:
            return
        self._wakeup.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_supervised, "lease heartbeat", self._heartbeat)
            await _supervised("queue dispatcher", lambda: self._dispatch(tg))

    async def _dispatch(self, tg: TaskGroup) -> None:
        while True:
            self._wakeup = anyio.Event()
            if self._stray_leases:
                await self._release_stray()
            opens = self._window_opens()
            working = self.settings.enabled and opens is None
            free = self.settings.concurrency - len(self._in_flight)
            due: float | None = None
            looked = False  # `due` is still what the queue says (nothing leased since)
            if working and free > 0:
                # A lease is a write transaction: taken only when a row is due (a PUT wakes
                # this, and its upload is usually minutes away).
                now = time.time()
                due, looked = self.registry.read.queue.next_due(now), True
                if due is not None and due <= now:
                    looked = False
                    try:
                        leased = await anyio.to_thread.run_sync(self._lease, free)
                    except RegistryUnavailable:
                        self._stray_leases = True  # its commit may have been done, unanswered
                        raise
                    for entry in leased:
                        self._in_flight[entry.path] = entry
                        tg.start_soon(self._work, entry)
            # Other nodes' changes (a move-to-cloud job, "upload now") wake nobody here: with a
            # shared registry the queue is looked at every SHARED_IDLE seconds at least.
            idle = SHARED_IDLE if self.store.shared else MAX_IDLE
            delay = idle
            if opens is not None:
                delay = min(max(opens - self.clock(), 0.0), idle)
            elif working and len(self._in_flight) < self.settings.concurrency:
                now = time.time()
                if not looked:
                    due = self.registry.read.queue.next_due(now)
                if due is not None:
                    delay = min(max(due - now, 0.0), idle)
            self._looks_at = time.time() + delay
            with anyio.move_on_after(delay):
                await self._wakeup.wait()
            self._looks_at = math.inf  # looking (or about to): no wake is skipped

    def _window_opens(self) -> float | None:
        """When `upload.hours` opens the queue next; None while it is open."""
        hours = self.settings.hours
        now = self.clock()
        opens = window_of(hours).next_opening(now)
        if (opens is None) != self._window_open:
            self._window_open = opens is None
            if opens is None:
                logs.event(log, "upload.window", "the upload window is open ({hours}): the "
                           "queue works", hours=hours, open=True)
            else:
                logs.event(log, "upload.window", "outside the upload window ({hours}): "
                           "uploads and remote deletes wait until {until}", hours=hours,
                           open=False, opens_at=opens,
                           until=time.strftime("%Y-%m-%d %H:%M", time.localtime(opens)))
        return opens

    def _lease(self, limit: int) -> list[Entry]:
        now = time.time()
        with self.registry.transaction() as tx:
            leased = tx.queue.lease_due(self.owner, now, now + LEASE_SECONDS, limit)
            work = []
            for leased_entry in leased:
                entry = leased_entry
                if entry.op == "upload":
                    routed = self._follow_plan(tx, entry)
                    if routed is None:
                        continue
                    entry = routed
                    # Before any byte leaves: from now on the remote may hold a copy even if its
                    # record never comes (an answer lost, a kill -9), so a DELETE must always
                    # queue the remote delete. Deleting a key that is not there is harmless.
                    tx.files.note_possible_copy(entry.path, entry.remote)
                work.append(entry)
            return work

    def _follow_plan(self, tx: Tables, entry: Entry) -> Entry | None:
        """An upload goes where the storage plan says now, not when it was queued: a plan
        changed since (a restart with a new config) re-routes it, or keeps the file local (the
        row goes; None). Uploaded files stay where they are recorded."""
        record = tx.files.get(entry.path)
        if record is None or record.version != entry.version:
            return entry  # stale: `_settle_stale` sorts it out
        route = self.store.route(record.path, record.content_type)
        if not route.upload:
            tx.queue.drop(entry.path)
            return None
        if route.remote != entry.remote:
            tx.queue.set_remote(entry.path, route.remote)
            return dataclasses.replace(entry, remote=route.remote)
        return entry

    async def _heartbeat(self) -> None:
        # The registry's server away: said once, and the next round tries again (the leases
        # last three rounds).
        renewing = logs.Failing(log, "queue: renewing the leases of work in flight")
        while True:
            await anyio.sleep(LEASE_SECONDS / 3)
            if self._in_flight:
                paths = list(self._in_flight)
                until = time.time() + LEASE_SECONDS
                try:
                    await anyio.to_thread.run_sync(self._renew, paths, until)
                except RegistryUnavailable as exc:
                    renewing.failed(exc)
                else:
                    renewing.ok()

    def _renew(self, paths: list[str], until: float) -> None:
        with self.registry.transaction() as tx:
            tx.queue.renew(self.owner, paths, until)

    async def _work(self, entry: Entry) -> None:
        try:
            remote = self.remotes.get(entry.remote)
            if remote is None:
                raise RemoteError(f"no remote named {entry.remote!r} is configured")
            try:
                if entry.op == "upload":
                    await self._upload(entry, remote)
                else:
                    await remote.delete(entry.path)
                    await anyio.to_thread.run_sync(self._finish_delete, entry)
                    logs.event(log, "remote_delete.done", "deleted the remote copy of {path!r} "
                               "in {remote}", path=entry.path, remote=remote.name)
            except RegistryUnavailable:
                raise  # not the remote's failure: no attempt counted, either way
            except Exception:
                metrics.remote_attempt(entry.op, remote.name, ok=False)
                raise
            metrics.remote_attempt(entry.op, remote.name, ok=True)
        except RegistryUnavailable as exc:
            # The registry's server is away (before, during or after the remote's part): no
            # attempt is spent, the entry goes back to the queue as it was and runs again.
            await self._put_back(entry, exc)
        except Exception as exc:
            retryable = is_retryable(exc)
            error = getattr(exc, "detail", "") or f"{type(exc).__name__}: {exc}"
            try:
                with anyio.CancelScope(shield=True):
                    retry_at = await anyio.to_thread.run_sync(self._fail, entry, error,
                                                              retryable)
            except RegistryUnavailable as again:  # released once the registry is back
                self._stray_leases = True
                log.warning("could not record the failure of %s of %r (%s): %s", entry.op,
                            entry.path, error, again.detail)
            except Exception:
                # Not even the failure could be recorded (the registry is failing too): the
                # lease goes at the next round that can release it, the attempt uncounted.
                self._stray_leases = True
                log.exception("could not record the failure of %s of %r (%s)", entry.op,
                              entry.path, error)
            else:
                self._log_failure(entry, error, retry_at,
                                  None if isinstance(exc, RemoteError) else exc)
        finally:
            self._in_flight.pop(entry.path, None)
            self.wake()

    async def _put_back(self, entry: Entry, exc: RegistryUnavailable) -> None:
        """Release the lease of an entry the registry's outage cut off; if that fails too (the
        server is still away), the lease runs out and the entry is taken again then."""
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release, entry)
        except Exception as again:
            self._stray_leases = True
            log.warning("%s of %r waits for the registry: %s; it goes again once the registry "
                        "answers (its lease runs out in %.0f s at most)", entry.op, entry.path,
                        getattr(again, "detail", "") or again, LEASE_SECONDS)
        else:
            log.info("%s of %r goes again: %s", entry.op, entry.path, exc.detail)

    def _release(self, *entries: Entry) -> None:
        with self.registry.transaction() as tx:
            for entry in entries:
                tx.queue.release(entry)

    async def _release_stray(self) -> None:
        """Release this owner's leases but those of the work in flight, once the registry
        answers (else next round). Only this dispatcher leases for the owner, and not
        meanwhile; work put back (or not) while this runs marks the next round anew, as the
        mark is taken down first."""
        self._stray_leases = False
        try:
            released = await anyio.to_thread.run_sync(self._release_all_but, list(self._in_flight))
        except RegistryUnavailable:
            self._stray_leases = True
            return
        if released:
            log.info("queue: released %d lease(s) the registry's outage had kept; their work "
                     "goes again", released)

    def _release_all_but(self, keep: list[str]) -> int:
        with self.registry.transaction() as tx:
            return tx.queue.release_stray(self.owner, keep)

    async def _upload(self, entry: Entry, remote: Remote) -> None:
        record = self.registry.read.files.get(entry.path)
        if (record is not None and record.version == entry.version
                and record.remote not in (None, entry.remote)):
            if not await self._leave_old_remote(entry, record.remote):
                return
            record = self.registry.read.files.get(entry.path)
        source = self.store.open_for_upload(entry.path, record, entry.version)
        if source is None:
            await anyio.to_thread.run_sync(self._settle_stale, entry)
            return
        assert record is not None
        generation = self.remote_generation
        started = time.monotonic()
        with source, PacedSource(source, self.bandwidth) as paced:
            uploaded = await remote.put(entry.path, paced.as_binary(), record.size,
                                        record.sha256, record.content_type, record.md5)
        await anyio.to_thread.run_sync(self._record_upload, entry, remote, uploaded.etag,
                                       generation)
        logs.event(log, "upload.done", "uploaded {path!r} ({size:,} bytes) to {remote} in "
                   "{seconds:.2f} s", path=entry.path, size=record.size, remote=remote.name,
                   seconds=round(time.monotonic() - started, 3), attempt=entry.attempts + 1)
        self.store.events.cached()  # the uploaded bytes (usually) moved into the cache area
        # Bytes the remote read past the wrapper (S3 multipart parts go through the file
        # descriptor) went at full speed: this upload's slot waits them off before it takes
        # other work, and other uploads queue behind them in the bucket, so the cap holds over
        # a run of uploads. (After the record: a crash while waiting must not upload again.)
        await self.bandwidth.pace(record.size - paced.paced)

    def _record_upload(self, entry: Entry, remote: Remote, etag: str, generation: int) -> None:
        now = time.time()
        key = remote.key_for(entry.path)
        with self.registry.transaction() as tx:
            if tx.settings.generation()[1] != generation:
                raise RemoteUnavailable("the remote settings changed during the upload; it "
                                        "goes again, to the remote they name now")
            record = tx.files.get(entry.path)
            # This version, and still this lease's: a lease that ran out (its renewals failed)
            # may be another worker's now, whose upload then records it, once.
            current = (record is not None and record.version == entry.version
                       and tx.queue.is_current(entry))
            if record is not None and current:
                tx.files.mark_uploaded(entry.path, remote.name, key, etag,
                                            record.size, now)
            elif record is not None:
                # Replaced while it went up: the newer version's upload overwrites this copy,
                # but until then a DELETE must know the remote holds one.
                tx.files.note_remote_copy(entry.path, remote.name, key)
            tx.queue.finish(entry)
        if current:
            # A step of its own, after the commit: a rename cannot be rolled back with a
            # transaction, and a crash here only leaves the bytes in files/, where reads (and a
            # later move) still find them.
            with self.registry.transaction() as tx:
                again = tx.files.get(entry.path)
                # Still this version and still in the cloud: a move back to local in between
                # made these bytes the only copy again, and they stay in files/.
                if (again is not None and again.version == entry.version
                        and again.location == "remote"):
                    self.store.hand_to_cache(tx, again)

    async def _leave_old_remote(self, entry: Entry, old: str) -> bool:
        """The file goes to another remote than the one holding its older copy (the plan
        changed). The registry records one remote per file, so the old copy goes first, under
        this lease, and the row points at the new remote before any byte moves: a DELETE from
        then on removes the new copy, and no copy is ever left unrecorded. (The local bytes
        are the file; the old copy is of an older version, or of these same bytes.) With
        `upload.delete_delay = "never"` the old copy stays, as the copies of deleted files do.
        False if the work changed meanwhile (the lease is then released)."""
        if self.store.settings.upload.delete_delay is not None:
            previous = self.remotes.get(old)
            if previous is None:
                raise RemoteError(f"the older copy of {entry.path!r} is in the remote {old!r}, "
                                  "which is not configured: add it back so it can be deleted")
            await previous.delete(entry.path)
            logs.event(log, "remote_delete.done", "deleted the older copy of {path!r} in "
                       "{remote}: the storage plan sends the file to {to} now", path=entry.path,
                       remote=old, to=entry.remote)
        return await anyio.to_thread.run_sync(self._point_at, entry, old)

    def _point_at(self, entry: Entry, old: str) -> bool:
        with self.registry.transaction() as tx:
            if not tx.queue.is_current(entry):
                tx.queue.release(entry)  # a re-PUT or DELETE came: its work runs next
                return False
            tx.files.move_remote_copy(entry.path, old, entry.remote)
            return True

    def _finish_delete(self, entry: Entry) -> None:
        with self.registry.transaction() as tx:
            if tx.queue.is_current(entry):
                # A file moved back to local whose cloud copy went: it is local only now.
                tx.files.forget_remote_copy(entry.path, entry.version, entry.remote)
            tx.queue.finish(entry)

    def _settle_stale(self, entry: Entry) -> None:
        """The version to upload is gone. Normally a newer PUT or a DELETE rewrote the row, and
        freeing it lets that work run. If the row still asks for this version, nothing else
        will fix it: drop it (the file is gone), re-aim it at the file's current version, or
        fail it (the registered bytes are missing) -- never hand it back unchanged, which
        would lease it again at once, forever."""
        now = time.time()
        with self.registry.transaction() as tx:
            if not tx.queue.is_current(entry):
                tx.queue.release(entry)
                return
            record = tx.files.get(entry.path)
            if record is None:
                tx.queue.drop(entry.path)
            elif record.version != entry.version:
                tx.queue.schedule(entry.path, "upload", record.version, entry.remote,
                                 now, now)
                tx.queue.release(entry)
            else:
                tx.queue.fail(entry, "the local bytes of this file are missing; "
                             "run filestore verify", None, now)
                logs.event(log, "upload.gave_up", "upload of {path!r} failed: its local bytes "
                           "are missing; run filestore verify", level=logging.ERROR,
                           path=entry.path, remote=entry.remote, attempts=entry.attempts + 1,
                           error="the local bytes of this file are missing")

    def _fail(self, entry: Entry, error: str, retryable: bool) -> float | None:
        """Record the failure; when the entry is tried again (None: it is not)."""
        now = time.time()
        retry_at = None
        attempt = entry.attempts + 1
        if retryable and attempt < self.settings.max_attempts:
            retry_at = now + next_delay(attempt, self.settings.retry_base, self.settings.retry_max)
        with self.registry.transaction() as tx:
            tx.queue.fail(entry, error, retry_at, now)
        return retry_at

    def _log_failure(self, entry: Entry, error: str, retry_at: float | None,
                     unexpected: BaseException | None) -> None:
        """One line per failed attempt: a warning while it is retried, an error when it is
        not (`upload.max_attempts` reached, or a failure no retry fixes); an unexpected error
        with its traceback."""
        kind = "upload" if entry.op == "upload" else "remote_delete"
        what = "upload" if entry.op == "upload" else "remote delete"
        attempt = entry.attempts + 1
        if retry_at is not None:
            logs.event(log, f"{kind}.failed", what + " of {path!r} failed (attempt {attempt}): "
                       "{error}; again in {retry_in:.1f} s", level=logging.WARNING,
                       path=entry.path, remote=entry.remote, attempt=attempt, error=error,
                       retry_in=round(max(retry_at - time.time(), 0.0), 3), exc_info=unexpected)
            return
        reason = (f"after {attempt} attempts (upload.max_attempts)"
                  if attempt >= self.settings.max_attempts else "and is not retried")
        logs.event(log, f"{kind}.gave_up", what + " of {path!r} failed {reason}: {error}; it "
                   "waits in the failed list", level=logging.ERROR, path=entry.path,
                   remote=entry.remote, attempts=attempt, max_attempts=self.settings.max_attempts,
                   error=error, reason=reason, exc_info=unexpected)


OUTAGE_PAUSE = 5.0  # at most between restarts while the registry's server is away


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop forever: an error (a locked or full registry, say) is logged and
    the loop starts again after a pause, instead of ending the task group that serves requests.
    The pause doubles while the loop keeps failing, and starts again at 1 s once it ran longer
    than the pause. The registry's server away (`RegistryUnavailable`) is one warning without a
    traceback, however many restarts the outage takes (each at most `OUTAGE_PAUSE` apart), and
    one info line once a restarted loop ran longer than its pause."""
    pause = 1.0
    runs = 0  # the loop's starts: a watch that still sees its own knows the loop kept running
    away = False

    async def resumed(run: int, after: float) -> None:
        nonlocal away
        await anyio.sleep(after)
        if run == runs and away:
            away = False
            log.info("%s resumed", name)

    async with anyio.create_task_group() as watches:
        while True:
            runs += 1
            if away:
                watches.start_soon(resumed, runs, pause)
            began = time.monotonic()
            try:
                await loop()
            except RegistryUnavailable as exc:
                if time.monotonic() - began > pause:
                    pause = 1.0
                wait = min(pause, OUTAGE_PAUSE)
                if not away:
                    log.warning("%s stopped: %s; it starts again every %.0f s or less until "
                                "the registry answers", name, exc.detail, OUTAGE_PAUSE)
                away = True
                await anyio.sleep(wait)
                pause = min(pause * 2, OUTAGE_PAUSE)
            except Exception:
                if time.monotonic() - began > pause:
                    pause = 1.0
                log.exception("%s failed; restarting it in %.0f s", name, pause)
                await anyio.sleep(pause)
                pause = min(pause * 2, 60.0)
