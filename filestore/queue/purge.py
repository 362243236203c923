"""Purge an account: delete every file under `ID/`, its cloud copies included, then the account.

`DELETE /admin/api/accounts/ID?purge=true` (or `filestore accounts remove ID --purge`) suspends
the account at once, so its tokens and signed URLs stop and nothing new arrives through them, and
queues a `purge-account` job, run like the moves (`moves.MoveRunner`: leased, resumed after its
cursor after a restart, cancellable, with progress):

1. Each file under the prefix is deleted as a DELETE would, a page at a time in path order, with
   its remote delete due at once whatever `upload.delete_delay` says ("never" included): the
   purge's point is that the account's data is gone.
2. The job waits until the queue holds nothing more under the prefix (the remote deletes done).
   A remote delete that gave up (`upload.max_attempts`) fails the job, naming how many: the
   account stays, suspended, and `filestore queue` shows them; once retried or dropped, a new
   purge finishes the job.
3. A file that arrived meanwhile (the administrator's token may still write there) is found by
   a last look and deleted in another round; then the account, its tokens and its storage go in
   one transaction, and the files count as gone from its usage.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from ..errors import Conflict, NotFound
from ..registry import Job

if TYPE_CHECKING:
    from ..store import Store
    from .moves import MoveRunner

PAGE = 500
POLL_SECONDS = 1.0


def start(store: Store, account: str) -> Job:
    """Suspend the account and queue the job that purges it (409 while another job runs)."""
    now = time.time()
    with store.registry.transaction() as tx:
        found = tx.accounts.get(account)
        if found is None:
            raise NotFound(f"no account {account!r}")
        usage = tx.accounts.usage(account)
        job = tx.jobs.create("purge-account", {"account": account}, usage.get("files", 0),
                             usage.get("bytes", 0), now)
        tx.accounts.update(account, state="suspended")
    return job


async def run(runner: MoveRunner, job: Job) -> None:
    """Delete the account's files, wait for their remote deletes, then forget the account."""
    account = str(job.option["account"])
    prefix = f"{account}/"
    cursor = job.cursor or prefix  # resumed after a restart: after the last page done
    reader = runner.registry.read
    while True:
        await _delete_all(runner, job, prefix, cursor)
        while True:
            pending, failed = reader.queue.count_under(prefix)
            if not pending:
                break
            with anyio.move_on_after(POLL_SECONDS):
                await runner.wait()
        if failed:
            raise Conflict(f"{failed:,} remote deletes under {prefix!r} gave up: retry or drop "
                           "them (`filestore queue list --failed`), then purge again; the "
                           "account stays, suspended")
        if await anyio.to_thread.run_sync(_forget, runner, job.id, account):
            return
        cursor = prefix  # files arrived meanwhile: another round


async def _delete_all(runner: MoveRunner, job: Job, prefix: str, cursor: str) -> None:
    """Delete every file under `prefix` after `cursor`, a page at a time; the cursor kept in
    the job after each page."""
    while True:
        page = runner.registry.read.files.listing(prefix, cursor, PAGE)
        done = size = 0
        for record in page:
            try:
                await runner.store.delete(record.path, purge=True)
            except NotFound:
                continue  # deleted meanwhile
            done += 1
            size += record.size
        cursor = page[-1].path if page else cursor
        finished = len(page) < PAGE
        await anyio.to_thread.run_sync(_scanned, runner, job.id, cursor, done, size, finished)
        if finished:
            return


def _scanned(runner: MoveRunner, job_id: int, cursor: str, done: int, size: int,
             finished: bool) -> None:
    with runner.registry.transaction() as tx:
        runner.check_held(tx, job_id)
        now = time.time()
        tx.jobs.progress(job_id, done=done, size=size, now=now)
        tx.jobs.scanned_to(job_id, cursor, finished=finished, now=now)


def _forget(runner: MoveRunner, job_id: int, account: str) -> bool:
    """Remove the account if it holds no file any more (and end the job); False: it does."""
    with runner.registry.transaction() as tx:
        runner.check_held(tx, job_id)
        if tx.accounts.usage(account).get("files", 0):
            return False
        tx.accounts.delete(account)
        tx.jobs.finish(job_id, "done", time.time())
        return True

