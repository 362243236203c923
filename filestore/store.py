"""The store: what a file operation means, across the local disk and the registry.

`service.py` calls this for every file operation; `local.py` moves bytes; `registry/` records
them. A PUT is:

1. receive the body into a temp file, hashing (nothing is recorded yet);
2. record an intent ("temp file T is about to replace path P") in its own transaction;
3. in one write transaction: rename T over P, record P's new size and hash, drop the intent.

SQLite's write lock makes step 3 atomic against every other writer in every process, so the
registry always describes the bytes on disk. A crash inside step 3, after the rename but before the
commit, leaves the intent with its temp file gone: recovery then records what the rename installed.
A DELETE removes the row first and unlinks the file in a second transaction if no PUT re-created
the path in between; a crash between the two leaves an unreferenced file, never a row without one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio

from . import logs, overrides, plan, recovery
from .auth import load_or_create_token, read_token
from .cluster import identity
from .config import DEFAULT_REMOTE, Settings
from .datadir import DataDir
from .errors import ChecksumMismatch, Conflict, NotFound, QuotaExceeded, TooLarge
from .local import LocalStore, Received
from .quota import quota_room, quota_text
from .registry import (
    SCHEMA_VERSION,
    FileRecord,
    Intent,
    Registry,
    Tables,
    in_flight,
    is_postgres,
    open_registry,
    registry_exists,
)
from .static import StaticTree

log = logging.getLogger("filestore")

DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Checks a PUT's preconditions against the current record (None: the path does not exist yet).
Precondition = Callable[[FileRecord | None], None]


# How long a read waits for a PUT of its path to commit (looking again after 1 ms, doubling to
# 50 ms): a commit takes milliseconds, but waits for the write lock and an fsync on a busy disk.
_COMMIT_WAIT_SECONDS = 5.0


def guess_content_type(path: str) -> str:
    return mimetypes.guess_type(path, strict=False)[0] or DEFAULT_CONTENT_TYPE


class StoreEvents(Protocol):
    """What the store tells the parts around it (the application wires them, see service.py)."""

    def changed(self, due: float | None = None) -> None:
        """New remote work may be due (a PUT, a DELETE): the queue's workers look now, or
        by `due` (wall clock) at the latest when that is when the work is due. On the event
        loop's thread."""

    def cached(self) -> None:
        """Bytes entered the cache area, so its budget is checked now."""

    def make_room(self, free: int) -> object:
        """Evict cached bytes until `free` bytes are free on the disk, if it can. In a thread."""

    async def replicate(self, path: str, received: Received,
                        meanwhile: Callable[[Received], None] | None = None) -> str:
        """Have another node keep a copy of a received body before it is recorded
        (`cluster.replicas`); that node's name. `meanwhile`: what this node does to the body
        while the copy goes (its fsync), in a thread; done whatever the push's outcome."""


class NoEvents:
    """A store nobody listens to (a command with no queue workers and no cache)."""

    def changed(self, due: float | None = None) -> None:
        pass

    def cached(self) -> None:
        pass

    def make_room(self, free: int) -> object:
        return None

    async def replicate(self, path: str, received: Received,
                        meanwhile: Callable[[Received], None] | None = None) -> str:
        if meanwhile is not None:
            meanwhile(received)
        return ""  # nobody to copy to: recorded without a replica


class Store:
    """`read_only`: for commands that only look. The registry is opened without a writer and
    never migrated, nor is anything recovered (when it is missing or of an older schema, the
    store opens as usual: the first command on a data directory prepares it)."""

    def __init__(self, settings: Settings, events: StoreEvents | None = None, *,
                 read_only: bool = False) -> None:
        # The config's settings; `settings` adds what was saved from the admin page.
        self.base_settings = settings
        self.settings = settings
        self.events: StoreEvents = events or NoEvents()
        self.datadir = DataDir(settings.data_dir)
        self.datadir.create()
        # A registry other nodes share (PostgreSQL): this node is `node` among them, and a
        # file another node holds is read from that node, never from bytes here in files/.
        self.shared = is_postgres(settings)
        self.node = settings.node
        self.alone = False
        if read_only and self._open_read_only():
            return
        start_fd = self.datadir.start_lock()
        try:
            self.registry: Registry = open_registry(settings)
            self.registry.migrate()
            # The saved settings and their generation, read together: a save in between
            # would otherwise never be applied here.
            self.settings, self.settings_generation = overrides.snapshot(
                settings, self.registry.read)
            if self.shared:
                identity.claim(self.datadir.root, self.registry.read, settings)
            self._open_parts()
            self.alone = self.datadir.join()
            if self.alone:
                recovery.at_start(self)
        finally:
            os.close(start_fd)

    def _open_read_only(self) -> bool:
        """Open the registry without a writer; False if it cannot be (missing, older schema)."""
        if not registry_exists(self.base_settings):
            return False
        registry = open_registry(self.base_settings, read_only=True)
        if registry.schema_version() != SCHEMA_VERSION:
            registry.close()
            return False
        self.registry = registry
        self.settings, self.settings_generation = overrides.snapshot(
            self.base_settings, registry.read)
        self._open_parts()
        return True

    def _open_parts(self) -> None:
        static = StaticTree(self.datadir.root) if self.settings.server.static_hits else None
        self.local = LocalStore(self.datadir.root, min_free=self.settings.storage.min_free,
                                keep_open=not self.shared, static=static)
        self.token, self.token_created = load_or_create_token(
            self.datadir.token_path, self.settings.auth.token
        )

    def reload_token(self) -> bool:
        """Take up a token rotated by `filestore token --rotate` (in another process); whether
        it changed. A configured `auth.token` never changes this way."""
        if self.settings.auth.token:
            return False
        token = read_token(self.datadir.token_path)
        if not token or token == self.token:
            return False  # a missing file keeps the token in use: never a surprise new one
        self.token = token
        return True

    def close(self) -> None:
        self.registry.close()
        self.datadir.leave()

    # -- reads ----------------------------------------------------------------------------------

    def lookup(self, path: str) -> FileRecord:
        record = self.registry.read.files.get(path)
        if record is None:
            raise NotFound(f"no file at {path!r}")
        return record

    @property
    def replicating(self) -> bool:
        """Whether a write is acknowledged only once another node holds a copy (read at each
        write: `cluster.replicas` may change at run time)."""
        return self.shared and bool(self.settings.cluster.replicas)

    def holds(self, record: FileRecord) -> bool:
        """Whether this node holds the file's local bytes: a SQLite registry's rows are all
        its one node's (holder ""); a shared one names the node (migration 13 claimed the
        rows from before it for the node that ran it)."""
        return record.holder == self.node if self.shared else True

    def open_for_upload(self, path: str, record: FileRecord | None,
                        version: int) -> BinaryIO | None:
        """The local bytes of `version` to upload: the holder's, or the copy this node keeps
        for it (cluster.replicas); None if they are gone."""
        replica = (record is not None and not self.holds(record)
                   and record.replica == self.node)
        return self.local.open_version(path, record, version, replica=replica)

    def hand_to_cache(self, tx: Tables, record: FileRecord) -> bool:
        """After a verified upload, in the caller's write transaction: this node's local bytes
        of `record` go to the cache area by rename (no copy; a rename keeps the inode) and are
        indexed, unless the plan keeps them local. Not a replica's copy: the sweep drops it."""
        if not self.holds(record) or self.route(record.path, record.content_type).keep_local:
            return False
        if not self.local.move_to_cache(record.path):
            return False
        tx.cache.add(record.path, record.version, record.size, record.sha256, time.time(),
                     record.inode)
        return True

    def list_files(self, prefix: str, after: str, limit: int) -> list[FileRecord]:
        return self.registry.read.files.listing(prefix, after, limit)

    async def open_current(self, path: str) -> tuple[FileRecord, int | None, bool]:
        """The record, an open fd of the very bytes it describes (None: only the cloud has them;
        the read-through cache fetches them) and whether those bytes are the cache's.

        A PUT renames its file into place before its transaction commits: a reader in between sees
        the old row and the new file (another inode). While the PUT's intent row exists, the reader
        waits for the commit (a few ms, backing off) and looks again. A data directory restored
        from a copy has new inodes throughout: there (no PUT in flight), after the retries, a file
        of the recorded size is taken as the recorded one.

        With a shared registry, a file another node holds (not uploaded yet) has no bytes here
        but a cached copy read from that node (None: the read-through reads it from there); and
        bytes here of another inode than this node's record names are an older version's, left
        until the sweeper drops them: never served, read anew instead.
        """
        attempt = waits = 0
        deadline = 0.0
        while True:
            record = self.lookup(path)
            if record.replica == self.node and record.location == "local" and self.shared:
                fd = self.local.open_replica(path, record.sha256)  # named by its bytes
                if fd is not None and os.fstat(fd).st_size == record.size:
                    return record, fd, False
                if fd is not None:
                    os.close(fd)
            mine = self.holds(record)
            opened = self.local.open_bytes(path, local=mine)
            if opened is None:
                if record.location == "remote" or not mine:
                    return record, None, False
            else:
                fd, cached = opened
                stat = os.fstat(fd)
                if stat.st_ino == record.inode:
                    return record, fd, cached
                writing = self.registry.read.intents.writing(path)
                if (not writing and attempt >= 2 and stat.st_size == record.size
                        and not self.shared):
                    return record, fd, cached
                os.close(fd)
                if writing:
                    deadline = deadline or time.monotonic() + _COMMIT_WAIT_SECONDS
                    if time.monotonic() < deadline:
                        await anyio.sleep(min(0.001 * 2**waits, 0.05))
                        waits += 1
                        continue
            attempt += 1
            if attempt == 3:
                break
        if self.shared and (record.location == "remote" or not mine):
            return record, None, False
        logs.event(log, "file.bytes_missing", "registered file {path!r} has no matching local "
                   "bytes", level=logging.ERROR, path=path)
        raise NotFound(f"{path!r} is registered but its bytes are missing; run filestore verify")

    # -- writes ---------------------------------------------------------------------------------

    async def put(
        self,
        path: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        content_length: int | None,
        expect_sha256: str | None = None,
        expect_md5: str | None = None,
        precondition: Precondition | None = None,
    ) -> tuple[FileRecord, bool]:
        """Store `body` at `path`; the record and whether the path is new."""
        if precondition is not None:
            precondition(self.registry.read.files.get(path))  # fail fast, before reading the body
        self.local.path_of(path)  # a symlink leading outside is refused before any byte lands
        # A declared length that cannot fit even with the cache emptied is refused now; else
        # the cache makes room as the bytes arrive (never for a length a client only declared).
        declared = content_length or 0
        if declared and self.local.free_bytes() < self.local.min_free + declared:
            self.local.check_room(declared, self.registry.read.counters.get("cache.bytes"))
        # Within the account's quota: refused before a byte when the declared length says so,
        # cut off as soon as the stream passes it; checked again where the bytes are recorded.
        room = quota_room(self.registry.read, path)
        if room is not None and declared > room:
            raise QuotaExceeded(quota_text(path, declared, room))
        limit = self.settings.storage.max_upload_size
        # A copy goes to another node first (cluster.replicas): this node's fsync of the body
        # waits alongside that push, not before it.
        replicating = self.replicating
        try:
            received = await self.local.receive(body, limit if room is None else min(limit, room),
                                                self.events.make_room, declared,
                                                sync=not replicating)
        except TooLarge:
            if room is not None and room < limit:
                raise QuotaExceeded(quota_text(path, None, room)) from None
            raise
        try:
            if expect_sha256 is not None and expect_sha256 != received.sha256:
                raise ChecksumMismatch(
                    f"X-Checksum-SHA256 is {expect_sha256} but the body's is {received.sha256}"
                )
            if expect_md5 is not None and expect_md5 != received.md5:
                raise ChecksumMismatch(
                    f"Content-MD5 is {expect_md5} but the body's MD5 is {received.md5}", "md5"
                )
            ctype = content_type or guess_content_type(path)
            replica = ""
            if replicating:
                replica = await self.events.replicate(path, received, self.local.sync_received)
            record, created, due = await anyio.to_thread.run_sync(
                self._commit_put, path, received, ctype, precondition, replica
            )
        except BaseException:
            self.local.discard(received)
            raise
        self.events.changed(due)
        return record, created

    def put_received(self, path: str, received: Received, replica: str = "") -> FileRecord:
        """Store an already received body at `path`, in the calling thread (the CLI's import;
        `replica`: the node that took a copy of it first, with `cluster.replicas`); the temp
        file is consumed or discarded."""
        try:
            record, _, _ = self._commit_put(path, received, guess_content_type(path), None,
                                         replica)
        except BaseException:
            self.local.discard(received)
            raise
        return record

    def _commit_put(
        self, path: str, received: Received, ctype: str, precondition: Precondition | None,
        replica: str = "",
    ) -> tuple[FileRecord, bool, float | None]:
        """Install and record the body: `record_put`'s answer."""
        with self.registry.single_write() as tx:
            intent_id = tx.intents.add("put", path, str(received.tmp), received.size,
                                       received.sha256, ctype)
        try:
            with self.registry.transaction() as tx:
                if precondition is not None:
                    precondition(tx.files.get(path))
                room = quota_room(tx, path)  # other PUTs may have used it meanwhile
                if room is not None and received.size > room:
                    raise QuotaExceeded(quota_text(path, received.size, room))
                conflict = tx.files.namespace_conflict(path)
                if conflict:
                    raise Conflict(conflict)
                inode = os.stat(received.tmp).st_ino
                self.local.install(received.tmp, path)
                recorded = self.record_put(tx, path, received.size, received.sha256, ctype,
                                           inode, received.md5, replica)
                self._settle_intents(tx, tx.intents.finish(intent_id, path))
                self.local.link_static(self.settings, recorded[0], self.local.root / path)
                return recorded
        except BaseException:
            if received.tmp.exists():
                # Nothing was installed: forget the intent.
                with self.registry.transaction() as tx:
                    tx.intents.remove(intent_id)
            else:
                # The rename happened but its record did not commit: the new bytes already
                # replaced the old, so record them now rather than leave the registry
                # describing bytes that are gone (recovery would, but only at the next start).
                intent = next((i for i in self.registry.read.intents.for_path(path)
                               if i.id == intent_id), None)
                if intent is not None:
                    with contextlib.suppress(Exception):
                        recovery.finish(self, intent)
            raise

    def record_put(self, tx: Tables, path: str, size: int, sha256: str,
                    ctype: str, inode: int, md5: str | None = None, replica: str = ""
                    ) -> tuple[FileRecord, bool, float | None]:
        """Record new bytes for `path` and queue their upload, in the caller's transaction:
        acknowledged means queued. Its row as recorded, whether the path is new, and when the
        remote work queued is due (None: none; the queue's workers need not look before)."""
        now = time.time()
        previous = tx.queue.get(path)
        plain = self.local.static is not None and tx.files.claim_plain_etag(path, int(now))
        created, record = tx.files.upsert(path, size, sha256, ctype, inode, now, md5, replica,
                                          plain)
        route = self.route(path, ctype)
        if not route.upload and not in_flight(previous, now):
            # The plan keeps it local: no upload, and an older copy in the cloud goes (as a
            # deleted file's would), or else a queued upload of older bytes is dropped. (An
            # upload in flight keeps its row below, so it finishes first; the queue then drops
            # the row, see worker.py.)
            delay = self.settings.upload.delete_delay
            if record.remote is not None and delay is not None:
                tx.queue.schedule(path, "delete", record.version, record.remote, now + delay, now)
                return record, created, now + delay
            if previous is not None and previous.op == "upload":
                tx.queue.drop(path)
            return record, created, None
        if previous is not None and previous.op == "delete":
            # The upload below replaces a pending remote delete of an older copy: the row
            # must remember that copy, or a DELETE before the upload would leave it behind.
            tx.files.note_remote_copy(path, previous.remote, None)
            record = dataclasses.replace(record, remote=previous.remote, remote_key=None)
        tx.queue.schedule(path, "upload", record.version, route.remote, now + route.delay, now)
        return record, created, now + route.delay

    def route(self, path: str, content_type: str) -> plan.Route:
        """Where the storage plan sends this file now (see plan.py)."""
        return plan.route(self.settings, path, content_type)

    async def delete(self, path: str, precondition: Precondition | None = None, *,
                     purge: bool = False) -> None:
        """Forget the file and remove its local bytes; its remote copy goes through the queue,
        after `upload.delete_delay` (at once with `purge`, whatever the delay says, "never"
        included: an account's files purged with it)."""
        await anyio.to_thread.run_sync(self._delete, path, precondition, purge)
        self.events.changed()

    def _delete(self, path: str, precondition: Precondition | None,
                purge: bool = False) -> None:
        with self.registry.transaction() as tx:
            record = tx.files.get(path)
            if record is None:
                raise NotFound(f"no file at {path!r}")
            if precondition is not None:
                precondition(record)
            tx.files.delete(path)
            self._settle_intents(tx, tx.intents.for_path(path, "put"))
            self._schedule_remote_delete(tx, record, 0.0 if purge else
                                         self.settings.upload.delete_delay)
            # Until the bytes are gone, say so: bytes with no row are a DELETE finishing (which
            # `verify` must not adopt back), and recovery finishes it after a crash.
            intent_id = tx.intents.add("delete", path)
        # The row is gone, so readers already answer 404; the bytes go unless a PUT came between.
        with self.registry.transaction() as tx:
            if tx.files.get(path) is None:
                self.local.remove(path)
            tx.intents.remove(intent_id)

    async def evict(self, path: str) -> bool:
        """Drop the cached bytes of an uploaded file, so the next GET reads the cloud copy.
        True if there were cached bytes. Refused (409) for a file the cloud does not hold yet."""
        return await anyio.to_thread.run_sync(self._evict, path)

    def _evict(self, path: str) -> bool:
        with self.registry.transaction() as tx:
            record = tx.files.get(path)
            if record is None:
                raise NotFound(f"no file at {path!r}")
            if record.location != "remote":
                raise Conflict(f"{path!r} has no verified remote copy yet: its local bytes "
                               "are the only ones")
            dropped = self.local.drop_cached(path)  # InUse (409) while a reader has it open
            tx.cache.remove(path)
        if dropped:
            logs.event(log, "cache.evicted", "cache: evicted {path!r} ({bytes:,} bytes), as asked",
                       path=path, count=1, bytes=record.size, reason="asked")
        return dropped

    def _schedule_remote_delete(self, tx: Tables, record: FileRecord,
                                delay: float | None) -> None:
        """After a DELETE: the remote copy goes (after `delay`; None: never) if there is one, or
        if an upload in flight may be making one right now; else the path's queued work goes."""
        now = time.time()
        entry = tx.queue.get(record.path)
        # `record.remote` survives a re-PUT: the remote may still hold an older copy.
        may_have_copy = record.remote is not None or in_flight(entry, now)
        if may_have_copy and delay is not None:
            remote = record.remote or (entry.remote if entry else DEFAULT_REMOTE)
            tx.queue.schedule(record.path, "delete", record.version, remote, now + delay, now)
        elif entry is not None:
            tx.queue.drop(record.path)

    def _settle_intents(self, tx: Tables, intents: list[Intent]) -> None:
        """Drop the PUT `intents` of a path whose process died after its rename: what this
        transaction writes supersedes them. An intent whose temp file still exists may belong to
        a PUT in flight in another process; it stays."""
        for intent in intents:
            if not Path(intent.tmp).exists():
                tx.intents.remove(intent.id)
