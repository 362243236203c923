"""The application layer: builds filestore's parts and exposes every operation, once.

The adapters (`api.py` for `/files/`, `admin/` for the page and its JSON API, `cli/` for the
command) parse their input, call one operation here and format its answer; none of them reaches
into the parts. The parts are the store (`store.py`: a file's bytes and row, the intent protocol),
the remotes, the queue's workers (`queue/worker.py`), the move jobs (`queue/moves.py`), the
read-through cache (`cache/`) and the settings reloader (`live_settings.py`).

Three ways to open it, by what the caller needs:
- `Service.opened(settings)`: the store alone, for a command that changes the registry;
  `read_only=True` for one that only looks (no migration, no crash recovery, no write lock).
- `service.working()`, on an opened service: plus the remotes, the queue's workers and the move
  runner, for a command that runs a move job in its own process (no server is running).
- `Service.serving(settings)`: everything, with its background tasks in one task group: the
  server's lifespan.

The service is also the store's listener (`store.StoreEvents`): the store is built first and
tells the service, which passes it on to the workers and the cache built after it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

from . import (
    account_storage,
    charts,
    cluster,
    live_settings,
    logs,
    overrides,
    paths,
    plan,
    serving,
    signing,
    startup,
)
from .accounts import Accounts, Principal
from .cache import pins, warm
from .cache.gc import CacheGC
from .cache.readthrough import ReadThrough
from .cluster.peers import Peers
from .config import Settings
from .errors import BadRequest, Conflict, FilestoreError, NotFound
from .importer import Candidate, ImportReport, Replicate, import_one
from .local import Received
from .probe import ProbeResult
from .queue import moves, purge
from .queue.moves import MoveRunner
from .queue.worker import QueueWorkers
from .registry import Entry, FileRecord, Job
from .remote import Remote, connected_remotes, open_remotes
from .s3api import multipart
from .s3api.keys import S3Keys
from .secrets import SecretBox
from .signing import SigningKey
from .stats import figures
from .store import Precondition, Store
from .verify import RemoteView, Report, Verifier

log = logging.getLogger("filestore")

def service_of(state: Any) -> Service:
    """The service an application's state holds (`app.state`, set by the lifespan)."""
    return state.service  # type: ignore[no-any-return]


class Service:
    def __init__(self, settings: Settings, *, read_only: bool = False) -> None:
        self.store = Store(settings, self, read_only=read_only)
        self.remotes: dict[str, Remote] = {}
        self.workers: QueueWorkers | None = None
        self.runner: MoveRunner | None = None
        self.cache: ReadThrough | None = None
        self.reloader: live_settings.SettingsReloader | None = None
        self.signing = SigningKey(self.store.datadir.root)
        self.accounts = Accounts(self.store.registry, lambda: self.store.token)
        self.s3_keys = S3Keys(self.store.registry, SecretBox(self.store.datadir.root))

    @property
    def settings(self) -> Settings:
        """The settings in force (the config's, with what the admin page saved over them)."""
        return self.store.settings

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def opened(cls, settings: Settings, *, read_only: bool = False) -> Iterator[Service]:
        service = cls(settings, read_only=read_only)
        try:
            yield service
        finally:
            service.store.close()

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[Service]:
        """An opened service, with the remotes connected and the queue's workers and the move
        runner built (the caller runs what it needs of them, see `run_move_here`)."""
        async with connected_remotes(self.settings) as remotes:
            self.remotes.update(remotes)
            _, runner = self._start_queue()
            try:
                yield self
            finally:
                runner.close()
                self.workers = self.runner = None
                self.remotes.clear()

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, settings: Settings) -> AsyncIterator[Service]:
        """Everything a server process runs, its background tasks in one task group."""
        with cls.opened(settings) as service:
            store = service.store
            # Every remote client opened, closed at shutdown: the settings reloader swaps a
            # remote in when the admin page changes it and closes the old one 120 s later.
            opened: list[Remote] = []
            try:
                warnings = plan.check_recorded(store.settings, store.registry.read)
                for warning in warnings if store.alone else ():  # once, not per worker
                    log.warning("%s", warning)
                service.remotes.update(open_remotes(store.settings))
                for remote in service.remotes.values():
                    opened.append(remote)
                    await remote.open()
                workers, runner = service._start_queue()
                reloader = service.reloader = live_settings.SettingsReloader(
                    store, workers, opened)
                async with anyio.create_task_group() as tg:
                    cache = service.cache = ReadThrough(store, service.remotes, tg)
                    if store.alone:
                        for remote in service.remotes.values():
                            tg.start_soon(startup.cleanup_remote, remote, store)
                        tg.start_soon(startup.repair_cache, store)
                    tg.start_soon(workers.run)
                    tg.start_soon(cache.maintain)
                    tg.start_soon(reloader.run)
                    tg.start_soon(runner.run)
                    tg.start_soon(service.accounts.flush_every)
                    if store.settings.s3.port:
                        tg.start_soon(multipart.sweep_every, service)
                    tg.start_soon(charts.sampler.run, store.registry)
                    tg.start_soon(serving.stop_with_supervisor)
                    await tg.start(cluster.run, store)  # its first heartbeat, then serve
                    yield service
                    tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await cache.usage.flush()  # the last second of statistics
                    await cache.peers.close()
            finally:
                with anyio.CancelScope(shield=True):
                    for remote in opened:
                        await remote.close()
                if service.runner is not None:
                    service.runner.close()

    def _start_queue(self) -> tuple[QueueWorkers, MoveRunner]:
        workers = self.workers = QueueWorkers(self.store, self.remotes)
        self.runner = MoveRunner(self.store, self.remotes, workers.owner, workers.wake)
        return workers, self.runner

    # -- what the store tells (store.StoreEvents) ------------------------------------------------

    def changed(self, due: float | None = None) -> None:
        if self.workers is not None:
            self.workers.wake(due)

    def cached(self) -> None:
        if self.cache is not None:
            self.cache.wake()

    def make_room(self, free: int) -> object:
        return self.cache.gc.make_free(free) if self.cache is not None else None

    async def replicate(self, path: str, received: Received,
                        meanwhile: Callable[[Received], None] | None = None) -> str:
        return await cluster.replicas.push(self.store, self.read_through.peers, path, received,
                                           meanwhile)

    # -- files -----------------------------------------------------------------------------------

    # One call each into the store (store.py), which owns a file's bytes and row.

    def lookup(self, path: str) -> FileRecord:
        return self.store.lookup(path)

    def list_files(self, prefix: str, after: str, limit: int) -> list[FileRecord]:
        return self.store.list_files(prefix, after, limit)

    async def open_current(self, path: str) -> tuple[FileRecord, int | None, bool]:
        """The record and an open fd of its very bytes (see `Store.open_current`)."""
        return await self.store.open_current(path)

    async def put(self, path: str, body: AsyncIterator[bytes], **options: Any
                  ) -> tuple[FileRecord, bool]:
        """Store `body` at `path` (options: see `Store.put`); the record, whether new."""
        return await self.store.put(path, body, **options)

    async def delete(self, path: str, precondition: Precondition | None = None) -> None:
        await self.store.delete(path, precondition)

    def single_use(self, grant: signing.Grant | None
                   ) -> contextlib.AbstractAsyncContextManager[signing.Use]:
        """Around the work of a request a signed URL authorized: a `--once` URL is claimed
        first and spent by a success (see `signing.single_use`); others pass."""
        return signing.single_use(grant, self.store.registry)

    @property
    def read_through(self) -> ReadThrough:
        """Reads of files only the cloud has (a server process's, see `serving()`)."""
        assert self.cache is not None, "only a serving service reads through the cache"
        return self.cache

    def file_state(self, path: str) -> Any:
        """Where one file is and what can be done to it (`admin/files.py`)."""
        from .admin.files import describe  # (not at the top: admin/ imports this module)

        return describe(self.store.registry.read, self.store.local, [self.lookup(path)])[0]

    async def file_action(self, path: str, action: str) -> tuple[str, bool]:
        """Run one of `ACTIONS` on `path`: a sentence saying what happened, and whether
        anything changed."""
        from .admin.files import ACTIONS  # (not at the top: admin/ imports this module)

        path = paths.normalize(path)
        if action not in ACTIONS:
            raise NotFound(f"no action {action!r} (known: {', '.join(ACTIONS)})")
        if action == "upload":
            await self.upload_now(path)
            return f"{path} will upload now", True
        if action == "local":
            moved = await self.bring_local(path)
            return (f"{path} is local again", True) if moved else (f"{path} was local already",
                                                                  False)
        if action == "evict":
            if await self.store.evict(path):
                return f"{path} evicted from the cache", True
            return f"{path} was not cached", False
        if action == "retry":
            if not await self.retry(path):
                raise Conflict(f"{path!r} has no failed upload to retry")
            return f"{path} will be retried now", True
        await self.store.delete(path)
        return f"{path} deleted", True

    async def bring_local(self, path: str) -> bool:
        """Make a file that is in the cloud local again, verified (False: it was local)."""
        return await moves.bring_local(self.store, self.remotes, path)

    # -- the queue -------------------------------------------------------------------------------

    async def upload_now(self, path: str) -> None:
        """Skip the file's cool-down: its upload is due now."""
        store = self.store

        def due_now() -> None:
            with store.registry.transaction() as tx:
                record = tx.files.get(path)
                if record is None:
                    raise NotFound(f"no file at {path!r}")
                if record.location == "remote":
                    raise Conflict(f"{path!r} is in the cloud already")
                route = store.route(path, record.content_type)
                if not route.upload:
                    raise Conflict(f"the storage plan keeps {path!r} local ({route.decided_by})")
                tx.queue.upload_now(path, record.version, route.remote, time.time())

        await anyio.to_thread.run_sync(due_now)
        self.changed()

    async def retry(self, path: str | None) -> int:
        """Give failed queue rows (one path's, or all with None) fresh attempts, due now; how
        many. A server's workers take them up now (another process's within a minute)."""
        wanted = None if path is None else paths.normalize(path)

        def retry() -> int:
            with self.store.registry.transaction() as tx:
                return tx.queue.retry(wanted, time.time())

        count = await anyio.to_thread.run_sync(retry)
        self.changed()
        return count

    async def drop(self, path: str) -> bool:
        """Forget a path's queued work; whether there was any."""
        wanted = paths.normalize(path)

        def drop() -> bool:
            with self.store.registry.transaction() as tx:
                return tx.queue.drop(wanted)

        return await anyio.to_thread.run_sync(drop)

    def queued(self, failed_only: bool = False) -> Iterator[Entry]:
        """Every queue row (or every failed one) in due order, streamed."""
        return self.store.registry.read.queue.listing(failed_only)

    def failed_uploads(self, after: str, limit: int) -> list[Entry]:
        """Failed rows in path order after `after`, a page at a time."""
        return self.store.registry.read.queue.failed_page(after, limit)

    # -- move jobs -------------------------------------------------------------------------------

    async def start_move(self, kind: str, delete_remote: bool = False) -> Job:
        job = await anyio.to_thread.run_sync(moves.start, self.store, kind, delete_remote)
        if self.runner is not None:
            self.runner.wake()
        return job

    async def purge_account(self, account: str) -> Job:
        """Suspend the account and start the job that deletes its files, cloud copies
        included, and then the account (`queue/purge.py`)."""
        job = await anyio.to_thread.run_sync(purge.start, self.store, account)
        logs.event(log, "account.purging", "account {account!r} suspended and being purged: "
                   "job {job}, {files:,} files", account=account, job=job.id, files=job.total)
        if self.runner is not None:
            self.runner.wake()
        return job

    async def cancel_move(self, job_id: int) -> Job:
        job = await anyio.to_thread.run_sync(moves.cancel, self.store, job_id)
        if self.runner is not None:
            self.runner.wake()
        return job

    def job(self, job_id: int) -> Job:
        return self.store.registry.read.jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """The latest jobs, newest first."""
        return self.store.registry.read.jobs.recent()

    async def run_move_here(self, job_id: int) -> None:
        """Run move job `job_id` in this process, with the queue's workers (`working()`; no
        server runs on the data directory), until it ended and the remote work it queued that
        is due now is done; then the cache is brought within its limits."""
        workers, runner = self.workers, self.runner
        assert workers is not None and runner is not None, "run it inside working()"
        job = await anyio.to_thread.run_sync(runner.lease)
        if job is None or job.id != job_id:
            raise FilestoreError(f"job {job_id} is being run by another process")
        async with anyio.create_task_group() as tg:
            tg.start_soon(workers.run)
            await runner.run_job(job)
            # The remote deletes a move to local queued (and anything else due) run before this
            # process goes; what waits for a retry is left to the next server.
            while workers.in_flight or self._work_due():
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        await anyio.to_thread.run_sync(self.collect_cache)

    def _work_due(self) -> bool:
        if not self.settings.upload.enabled:
            return False  # nothing would take it
        due = self.store.registry.read.queue.next_due(time.time())
        return due is not None and due <= time.time()

    # -- the cache -------------------------------------------------------------------------------

    def cache_collector(self) -> CacheGC:
        return CacheGC(self.store.registry, self.store.local, self.settings.cache)

    def collect_cache(self) -> None:
        self.cache_collector().collect()

    # -- settings and figures --------------------------------------------------------------------

    def settings_view(self) -> dict[str, Any]:
        """The settings the admin page can change, by flat section, and which it saved."""
        return overrides.describe(self.settings, overrides.saved(self.store.registry.read))

    async def save_settings(self, changes: Any) -> ProbeResult:
        """Test `changes` ({section: {key: value}}) and save them if the test passes."""
        if not isinstance(changes, dict) or not changes:
            raise BadRequest("send the settings to change, as {section: {key: value}}")
        return await live_settings.save(self.store, self.reloader, changes)

    def account_storage(self, principal: Principal, account: str) -> dict[str, Any]:
        """An account's own remotes (no secrets) and plan rules (`account_storage.py`)."""
        principal.check_account(account)
        self.accounts.get(account)  # 404 for none
        return account_storage.public(self.store.registry.read, account, self.settings)

    async def save_account_storage(self, principal: Principal, account: str, body: Any, *,
                                   replace: bool) -> ProbeResult:
        """Check, test and save an account's own storage (PUT: `replace`; PATCH: merge)."""
        return await live_settings.save_account_storage(
            self.store, self.reloader, principal, account, body, replace=replace)

    def counters(self) -> dict[str, int]:
        return self.store.registry.read.counters.all()

    @property
    def alone(self) -> bool:
        """Whether this process is the only one on the data directory (no server runs)."""
        return self.store.alone

    def stats(self) -> dict[str, Any]:
        """The admin page's figures (see stats.py)."""
        return figures(self.store.registry, self.settings)

    def plan_overview(self) -> dict[str, Any]:
        return plan.overview(self.settings, self.store.registry.read)

    def files_url(self, request_base: str | None = None) -> str:
        """Where clients reach `/files/`: the base of the request that asks (the admin page's
        own), unless none is given or the admin page has a listener of its own
        (`admin.listen`); then `http://server.host:server.port`."""
        if request_base is not None and not self.settings.admin.listen:
            return request_base.rstrip("/")
        return files_url(self.settings)

    def route(self, path: str, content_type: str) -> plan.Route:
        """Where the storage plan sends a file at `path` of `content_type` now."""
        return self.store.route(path, content_type)

    # -- maintenance -----------------------------------------------------------------------------

    def verify(self, *, repair: bool, remote: Mapping[str, RemoteView] | None,
               progress: Callable[[int], None] = lambda rows: None) -> Report:
        """Compare the disk, the cache and (`remote`: `verify.remote_view`) the cloud with the
        registry."""
        return Verifier(self.store, repair=repair, remote=remote, progress=progress).run()

    def import_file(self, candidate: Candidate, prefix: str, report: ImportReport,
                    move: bool = False, replicate: Replicate | None = None) -> None:
        """Store one file of a tree being imported, as a PUT would (importer.py)."""
        import_one(self.store, candidate, prefix, report, move, replicate)

    @contextlib.asynccontextmanager
    async def replicator(self) -> AsyncIterator[Replicate]:
        """For a command that writes from a worker thread (the import): what takes a copy of
        a received body to another node from that thread, through a node-to-node session of
        this event loop's, as a PUT's `replicate`."""
        peers = Peers(self.store)

        def replicate(path: str, received: Received) -> str:
            return anyio.from_thread.run(cluster.replicas.push, self.store, peers, path,
                                         received)
        try:
            yield replicate
        finally:
            await peers.close()

    def backup(self, target: Path) -> None:
        """A consistent copy of the registry at `target`, safe while servers write to it."""
        self.store.registry.backup(target)

    # -- the cache's pins and warming --------------------------------------------------------------

    def cache_pins(self) -> list[dict[str, Any]]:
        return pins.listing(self.store.registry.read)

    async def pin_cache(self, prefix: str) -> pins.Pinned:
        return await anyio.to_thread.run_sync(pins.pin, self.store, prefix)

    async def unpin_cache(self, prefix: str) -> int:
        return await anyio.to_thread.run_sync(pins.unpin, self.store, prefix)

    async def warm_cache(self, prefix: str, concurrency: int,
                         progress: warm.Progress = warm.quiet) -> warm.WarmReport:
        return await warm.here(self.store, self.cache, prefix, concurrency, progress)

    async def start_warming(self, prefix: str) -> warm.WarmPlan:
        return await warm.start(self.read_through, prefix)


def files_url(settings: Settings) -> str:
    """`http://server.host:server.port` as a client on this machine reaches it."""
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.server.port}"
