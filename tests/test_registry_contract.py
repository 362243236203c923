"""The registry's contract, against both backends: every table group's operations on a fresh
SQLite registry and on a fresh PostgreSQL database (a real server, `pg.py`), the counters the
triggers keep compared with a recount after a random workload, the dense cache slots, leases
that never go to two leasers, and a real server on a PostgreSQL registry end to end."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filestore.config import load_settings
from filestore.errors import ConfigError, Conflict, NotFound, RegistryUnavailable
from filestore.registry import (
    SCHEMA_VERSION,
    Part,
    SqliteRegistry,
    Upload,
    open_registry,
    require_sqlite,
)
from filestore.registry.files import FLOOR_SECONDS
from filestore.registry.postgres import PostgresRegistry
from filestore.registry.samples import Sample

pytest_plugins = ["pg"]
pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(__file__).resolve().parents[1] / "filestore"
SHA = "0" * 64


class Backend:
    """A fresh registry of one kind, and the test's own raw connection to it (for what the
    interface does not show: the cache's slots)."""

    def __init__(self, kind: str, tmp_path: Path, url: str = "") -> None:
        self.kind, self.url, self.path = kind, url, tmp_path / "registry.sqlite3"
        self.registry: Any = (SqliteRegistry(self.path) if kind == "sqlite"
                              else PostgresRegistry(url, pool_size=3))
        self.registry.migrate()

    def another(self) -> Any:
        """A second registry on the same database (another process, say)."""
        other = (SqliteRegistry(self.path) if self.kind == "sqlite"
                 else PostgresRegistry(self.url, pool_size=2))
        other.migrate()
        return other

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                return conn.execute(query).fetchall()
        with psycopg.connect(self.url) as conn:
            return conn.execute(query).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue("pg_registry_url") if request.param == "postgres" else ""
    made = Backend(request.param, tmp_path, url)
    yield made
    made.registry.close()


@pytest.fixture
def registry(backend: Backend) -> Any:
    return backend.registry


def put(registry: Any, path: str, size: int = 1, now: float = 0.0) -> int:
    with registry.transaction() as tx:
        return tx.files.upsert(path, size, SHA, "text/plain", 1, now)[1].version


# -- the registry itself --------------------------------------------------------------------------


def test_migrating_a_fresh_database_and_again(tmp_path, pg_url):
    for backend in (Backend("sqlite", tmp_path), Backend("postgres", tmp_path, pg_url)):
        _migrated_and_again(backend)
        backend.registry.close()


def _migrated_and_again(backend: Backend) -> None:
    registry = backend.registry
    assert registry.schema_version() == SCHEMA_VERSION
    registry.migrate()  # a second start: nothing to do
    other = backend.another()  # another process (or node) migrating the same database
    other.close()
    assert registry.schema_version() == SCHEMA_VERSION
    assert registry.read.counters.get("files") == 0


def test_a_transaction_is_all_or_nothing(registry):
    with pytest.raises(RuntimeError), registry.transaction() as tx:
        tx.files.upsert("a", 5, SHA, "t", 1, 0.0)
        raise RuntimeError("the caller fails mid-transaction")
    assert registry.read.files.get("a") is None and registry.read.counters.get("files") == 0
    put(registry, "a", 5)
    assert registry.read.files.get("a").size == 5


def test_readers_read_only_see_commits_and_snapshots(backend):
    registry = backend.registry
    reader = registry.open_reader()
    try:
        with pytest.raises(Exception):  # noqa: B017 - sqlite3's or psycopg's, each its own
            reader.files.upsert("x", 1, SHA, "t", 1, 0.0)
        put(registry, "a", 3)
        assert reader.files.get("a").size == 3
        with reader.snapshot() as snap:
            assert snap.counters.get("files") == 1
        reader.ping()
    finally:
        reader.close()
    read_only = (SqliteRegistry(backend.path, read_only=True) if backend.kind == "sqlite"
                 else PostgresRegistry(backend.url, read_only=True))
    try:
        assert read_only.read_only and read_only.read.files.get("a").size == 3
        with pytest.raises(RuntimeError, match="read-only"), read_only.transaction():
            pass
    finally:
        read_only.close()


# -- files and intents ----------------------------------------------------------------------------


def test_files_upsert_listing_and_versions(registry):
    first = put(registry, "a/b.txt", 5, now=1.0)
    with registry.transaction() as tx:
        new, written = tx.files.upsert("a/b.txt", 7, SHA, "text/html", 9, 2.0, md5="m")
    second = written.version
    assert not new and second > first
    record = registry.read.files.get("a/b.txt")
    assert written == record  # the row as written, as a read then finds it
    assert (record.size, record.content_type, record.inode, record.md5, record.created,
            record.modified, record.version) == (7, "text/html", 9, "m", 1.0, 2.0, second)
    for path in ("a/é", "a/z", "a0", "a/", "b", "a/c/d"):
        put(registry, path)
    names = [r.path for r in registry.read.files.listing("a/")]
    assert names == ["a/", "a/b.txt", "a/c/d", "a/z", "a/é"]  # byte order, as SQLite's
    assert [r.path for r in registry.read.files.listing("a/", after="a/c/d", limit=1)] == ["a/z"]
    assert [r.path for r in registry.read.files.page("a0", 10)] == ["b"]
    assert len(registry.read.files.page("", 100)) == 7
    assert put(registry, "other") > second  # versions are unique across paths


def test_plain_etags_are_claimed_once_per_path_and_second(registry):
    """nginx's ETag (mtime and size) may go to one version of a path per second, and only
    for a later second than any before, even after the path was deleted (migration 14)."""
    with registry.transaction() as tx:
        claims = [tx.files.claim_plain_etag("p", 100), tx.files.claim_plain_etag("p", 100),
                  tx.files.claim_plain_etag("q", 100), tx.files.claim_plain_etag("p", 99),
                  tx.files.claim_plain_etag("p", 101)]
        tx.files.upsert("p", 3, SHA, "t", 1, 101.5, plain_etag=True)
    assert claims == [True, False, True, False, True]
    assert registry.read.files.get("p").plain_etag
    with registry.transaction() as tx:
        tx.files.delete("p")
        assert not tx.files.claim_plain_etag("p", 101)  # the deleted version's second
        tx.files.upsert("p", 3, SHA, "t", 1, 101.7)
    assert not registry.read.files.get("p").plain_etag


def test_plain_etag_floors_expire(registry):
    """A path's floor lasts `FLOOR_SECONDS` (migration 15): a claim drops the older ones,
    so the table holds the last day's claims, not every path ever PUT."""
    with registry.transaction() as tx:
        assert tx.files.claim_plain_etag("old", 100)
        assert tx.files.claim_plain_etag("recent", 100 + FLOOR_SECONDS)
        assert not tx.files.claim_plain_etag("old", 100)  # within its day: still the floor
        # A day and a second after "old"'s claim: gone, and with it the refusal.
        assert tx.files.claim_plain_etag("other", 101 + FLOOR_SECONDS)
        assert tx.files.claim_plain_etag("old", 100)
        assert not tx.files.claim_plain_etag("recent", 100 + FLOOR_SECONDS)  # kept


def test_files_namespace_conflicts(registry):
    put(registry, "a/b")
    tables = registry.read.files
    assert "is a file" in tables.namespace_conflict("a/b/c")
    assert "is a directory" in tables.namespace_conflict("a")
    assert tables.namespace_conflict("a/bc") is None and tables.namespace_conflict("a/c") is None


def test_files_remote_copies(registry):
    put(registry, "p", 10)
    with registry.transaction() as tx:
        tx.files.note_possible_copy("p", "cold")
        tx.files.note_possible_copy("p", "other")  # kept: a copy is already noted
    assert registry.read.files.get("p").remote == "cold"
    with registry.transaction() as tx:
        tx.files.mark_uploaded("p", "cold", "fs/p", "etag", 10, 5.0)
    record = registry.read.files.get("p")
    assert (record.location, record.remote, record.remote_key, record.uploaded_at) == (
        "remote", "cold", "fs/p", 5.0)
    counts = registry.read.counters
    assert counts.with_prefix("uploads.") == {"uploads.done": 1, "uploads.bytes": 10,
                                              "uploads.done.cold": 1, "uploads.bytes.cold": 10,
                                              "uploads.done.default": 0,
                                              "uploads.bytes.default": 0}
    assert counts.get("files.remote.cold") == 1 and counts.get("bytes.remote.cold") == 10
    assert registry.read.files.recorded_remotes() == ["cold"]
    with registry.transaction() as tx:
        tx.files.mark_local("p", 42)
        tx.files.set_error("p", record.version, "gone")
    record = registry.read.files.get("p")
    assert (record.location, record.inode, record.remote, record.uploaded_at) == (
        "local", 42, "cold", None)
    assert counts.get("files.remote.cold") == 0 and counts.get("files.local") == 1
    with registry.transaction() as tx:
        tx.files.point_at_copy("p", record.version, "warm", "k2", 6.0)
        tx.files.set_inode("p", 43)
    record = registry.read.files.get("p")
    assert (record.location, record.remote, record.inode) == ("remote", "warm", 43)
    with registry.transaction() as tx:
        tx.files.mark_local("p", 1)
        tx.files.forget_remote_copy("p", record.version, "warm")
    assert registry.read.files.get("p").remote is None
    with registry.transaction() as tx:
        tx.files.note_remote_copy("p", "a", "k")
        tx.files.move_remote_copy("p", "a", "b")
    assert (registry.read.files.get("p").remote, registry.read.files.get("p").remote_key) == (
        "b", None)
    with registry.transaction() as tx:
        assert tx.files.forget_copies_in("b") == 1
        assert tx.files.delete("p") and not tx.files.delete("p")
    assert counts.get("files") == 0 and counts.get("bytes") == 0


def test_intents(registry):
    with registry.transaction() as tx:
        first = tx.intents.add("put", "a", "/tmp/x", 3, SHA, "t")
        second = tx.intents.add("delete", "a")
        tx.intents.add("put", "b")
    assert second > first
    read = registry.read.intents
    assert [i.op for i in read.for_path("a")] == ["put", "delete"]
    assert [i.id for i in read.for_path("a", "delete")] == [second]
    assert read.writing("a") and not read.writing("c")
    assert read.all()[0].tmp == "/tmp/x"
    with registry.transaction() as tx:
        tx.intents.remove(first)
    assert [i.id for i in read.for_path("a")] == [second]
    # An intent finished: removed, and the path's other PUT intents returned.
    with registry.transaction() as tx:
        third, fourth = (tx.intents.add("put", "a", f"/tmp/{n}") for n in (3, 4))
        others = tx.intents.finish(third, "a")
    assert [(i.id, i.tmp) for i in others] == [(fourth, "/tmp/4")]
    assert [i.id for i in read.for_path("a")] == [second, fourth]


# -- the queue ------------------------------------------------------------------------------------


def test_queue_schedule_lease_finish_fail_retry(registry):
    version = put(registry, "a", 4)
    with registry.transaction() as tx:
        tx.queue.schedule("a", "upload", version, "default", 10.0, 1.0)
        tx.queue.schedule("b", "delete", 3, "cold", 20.0, 1.0)
    read = registry.read.queue
    assert read.next_due(0.0) == 10.0 and read.oldest_due("upload") == 10.0
    assert read.count_uploads(due=False, now=5.0, cap=10) == 1
    with registry.transaction() as tx:
        assert tx.queue.lease_due("w1", 5.0, 100.0, 10) == []  # not due yet
        [entry] = tx.queue.lease_due("w1", 15.0, 100.0, 10)
    assert (entry.path, entry.lease_owner, entry.leased_until) == ("a", "w1", 100.0)
    assert read.uploads_in_flight(15.0) == 1 and read.next_due(15.0) == 20.0
    with registry.transaction() as tx:
        assert tx.queue.lease_due("w2", 15.0, 100.0, 10) == []  # leased already
        tx.queue.renew("w1", ["a"], 200.0)
        assert tx.queue.is_current(entry)
        tx.queue.fail(entry, "flaky", 50.0, 16.0)
    row = read.get("a")
    assert (row.attempts, row.last_error, row.not_before, row.leased_until) == (
        1, "flaky", 50.0, None)
    with registry.transaction() as tx:
        leased = tx.queue.lease_due("w1", 60.0, 100.0, 10)
        assert [e.path for e in leased] == ["b", "a"]  # in due order
        tx.queue.fail(leased[1], "denied", None, 61.0)
        tx.queue.release(leased[0])
    assert read.get("a").state == "failed"
    assert [e.path for e in read.listing(failed_only=True)] == ["a"]
    assert read.failed_oldest("upload") == ("a", 61.0)
    assert [e.path for e in read.failed_page("", 10)] == ["a"]
    assert [e.path for e in read.recent_errors(5)] == ["a"]
    assert read.count_under("") == (1, 1) and read.count_by_remote() == {"default": 1, "cold": 1}
    assert read.deletes_to("cold") == 1 and read.unprotected_oldest() == ("a", 0.0)
    with registry.transaction() as tx:
        assert tx.queue.retry("a", 70.0) == 1 and tx.queue.retry(None, 70.0) == 0
    assert (read.get("a").state, read.get("a").attempts) == ("pending", 0)
    with registry.transaction() as tx:
        [entry] = [e for e in tx.queue.lease_due("w1", 70.0, 100.0, 10) if e.path == "a"]
        tx.queue.finish(entry)
    assert read.get("a") is None
    with registry.transaction() as tx:
        assert tx.queue.drop("b") and not tx.queue.drop("b")
    assert registry.read.counters.with_prefix("queue.") == {
        "queue.upload.pending": 0, "queue.upload.failed": 0, "queue.delete.pending": 0,
        "queue.delete.failed": 0}


def test_stray_leases_of_one_owner_are_released_but_its_work_in_flight(registry):
    """After an outage a worker releases its leases but those of its work in flight: one it
    could not release, one whose lease's answer it never got (`QueueWorkers._release_stray`)."""
    with registry.transaction() as tx:
        for path in ("a", "b", "c", "d"):
            tx.queue.schedule(path, "delete", 1, "default", 0.0, 0.0)
        mine = tx.queue.lease_due("w1", 1.0, 100.0, 3)
        theirs = tx.queue.lease_due("w2", 1.0, 100.0, 10)
    assert [e.path for e in mine] == ["a", "b", "c"] and [e.path for e in theirs] == ["d"]
    with registry.transaction() as tx:
        assert tx.queue.release_stray("w1", ["b"]) == 2
        assert tx.queue.release_stray("w1", ["b"]) == 0
    leases = {p: registry.read.queue.get(p).lease_owner for p in ("a", "b", "c", "d")}
    assert leases == {"a": None, "b": "w1", "c": None, "d": "w2"}
    with registry.transaction() as tx:
        assert tx.queue.release_stray("w1", []) == 1


def test_queue_work_replaced_in_flight_is_not_recorded(registry):
    version = put(registry, "a")
    with registry.transaction() as tx:
        tx.queue.schedule("a", "upload", version, "default", 0.0, 0.0)
        [entry] = tx.queue.lease_due("w", 1.0, 100.0, 1)
    newer = put(registry, "a")
    with registry.transaction() as tx:  # a re-PUT while the upload runs: the lease is kept
        tx.queue.schedule("a", "upload", newer, "default", 50.0, 2.0)
    row = registry.read.queue.get("a")
    assert (row.version, row.lease_owner) == (newer, "w")
    with registry.transaction() as tx:
        assert not tx.queue.is_current(entry)
        tx.queue.finish(entry)  # stale: frees the row for the newer work, keeps it
    row = registry.read.queue.get("a")
    assert (row.version, row.lease_owner, row.not_before) == (newer, None, 50.0)
    with registry.transaction() as tx:
        [entry] = tx.queue.lease_due("w", 60.0, 100.0, 1)
        tx.queue.set_remote("a", "cold")
        tx.queue.clear_leases()
    assert registry.read.queue.get("a").leased_until is None
    assert registry.read.queue.get("a").remote == "cold"


def test_queue_listing_streams_every_row_in_due_order(registry):
    with registry.transaction() as tx:
        for i in range(1203):  # more than one page of the PostgreSQL listing
            tx.queue.schedule(f"p{i:05}", "upload", i, "default", float(i % 7), 0.0)
    listed = list(registry.read.queue.listing())
    assert len(listed) == 1203 and len({e.path for e in listed}) == 1203
    assert listed == sorted(listed, key=lambda e: (e.not_before, e.path))
    assert registry.read.queue.count_uploads(due=True, now=3.0, cap=100) == 100


def test_two_leasers_never_get_the_same_row(backend):
    with backend.registry.transaction() as tx:
        for i in range(300):
            tx.queue.schedule(f"p{i}", "upload", i, "default", 0.0, 0.0)
    registries = [backend.registry, backend.another()]
    taken: list[list[str]] = [[], [], [], []]
    start = threading.Barrier(4)

    def lease(n: int) -> None:
        start.wait()
        while True:
            with registries[n % 2].transaction() as tx:
                got = tx.queue.lease_due(f"w{n}", 1.0, 100.0, 7)
            if not got:
                return
            taken[n].extend(e.path for e in got)

    threads = [threading.Thread(target=lease, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    registries[1].close()
    everything = [path for paths in taken for path in paths]
    assert len(everything) == 300 and len(set(everything)) == 300  # each row once, all rows


# -- jobs -----------------------------------------------------------------------------------------


def test_jobs_lifecycle_and_their_figures(registry):
    with registry.transaction() as tx:
        job = tx.jobs.create("move-to-cloud", {"x": 1}, 0, 0, 1.0)
        with pytest.raises(Conflict):
            tx.jobs.create("move-to-local", {}, 0, 0, 1.0)
    assert job.state == "queued" and job.option == {"x": 1}
    with pytest.raises(NotFound):
        registry.read.jobs.get(job.id + 100)
    with registry.transaction() as tx:
        leased = tx.jobs.lease("me", 2.0)
        assert tx.jobs.lease("you", 3.0) is None  # held
        assert tx.jobs.holds(job.id, "me") and not tx.jobs.holds(job.id, "you")
        tx.jobs.renew(job.id, "me", 4.0)
        tx.jobs.scanned_to(job.id, "m", files=3, size=30, finished=True, now=4.0)
        tx.jobs.progress(job.id, done=1, size=10, errors=1, error="bad", now=4.0)
    assert leased.state == "running" and leased.lease_owner == "me"
    got = registry.read.jobs.get(job.id)
    assert (got.cursor, got.scanned, got.total, got.total_bytes, got.done, got.bytes,
            got.errors, got.last_error) == ("m", 1, 3, 30, 1, 10, 1, "bad")
    # Queue rows tagged with the job move its figures by triggers.
    versions = [put(registry, p, 5) for p in ("j1", "j2", "j3")]
    with registry.transaction() as tx:
        tx.jobs.set_totals(job.id, 3, 15)
        for path, version in zip(("j1", "j2", "j3"), versions, strict=True):
            tx.queue.upload_now(path, version, "default", 5.0, job=job.id)
        entries = {e.path: e for e in tx.queue.lease_due("w", 6.0, 100.0, 10)}
        tx.files.mark_uploaded("j1", "default", "k", "e", 5, 6.0)
        tx.queue.finish(entries["j1"])  # done, its bytes count
        tx.queue.fail(entries["j2"], "denied", None, 6.0)  # an error
        tx.queue.schedule("j3", "upload", versions[2], "default", 99.0, 6.0)  # replaced: done
    got = registry.read.jobs.get(job.id)
    assert (got.done, got.bytes, got.errors) == (1 + 2, 10 + 5, 1 + 1)
    assert registry.read.queue.job_pending(job.id) is False
    with registry.transaction() as tx:
        tx.jobs.release(job.id, "me")
        cancelled = tx.jobs.cancel(job.id, 7.0)
        with pytest.raises(Conflict):
            tx.jobs.cancel(job.id, 7.0)
        assert tx.queue.release_job(job.id, 7.0) == 1  # j2, failed: untagged, kept
    assert cancelled.state == "cancelled" and registry.read.jobs.active() is None
    assert [j.id for j in registry.read.jobs.recent()] == [job.id]
    with registry.transaction() as tx:
        second = tx.jobs.create("move-to-local", {}, 0, 0, 8.0)
        tx.jobs.finish(second.id, "done", 9.0)
    assert registry.read.jobs.get(second.id).finished == 9.0


def test_a_cancelled_job_gives_back_what_it_queued(registry):
    old, fresh = put(registry, "cooling"), put(registry, "new")
    with registry.transaction() as tx:
        tx.queue.schedule("cooling", "upload", old, "default", 500.0, 0.0)
        tx.queue.schedule("gone", "delete", 1, "default", 300.0, 0.0)
        job = tx.jobs.create("move-to-cloud", {}, 0, 0, 0.0)
        for path, version in (("cooling", old), ("new", fresh), ("gone", 7)):
            tx.queue.upload_now(path, version, "default", 1.0, job=job.id)
        tx.jobs.cancel(job.id, 2.0)
        assert tx.queue.release_job(job.id, 2.0) == 3
    read = registry.read.queue
    assert read.get("new") is None  # the job made it: gone
    assert read.get("cooling").not_before == 500.0 and not read.job_pending(job.id)
    assert (read.get("gone").op, read.get("gone").not_before) == ("delete", 300.0)


# -- the cache index and pins ---------------------------------------------------------------------


def slots(backend: Backend) -> list[int]:
    return sorted(slot for (slot,) in backend.sql("SELECT slot FROM cache_entries"))


def dense(found: list[int]) -> bool:
    free, pinned = [s for s in found if s >= 0], [s for s in found if s < 0]
    return free == list(range(len(free))) and pinned == list(range(-len(pinned), 0))


def test_cache_index_keeps_dense_slots(backend):
    registry = backend.registry
    with registry.transaction() as tx:
        for i in range(10):
            tx.cache.add(f"c{i}", 1, 10 + i, SHA, float(i))
        tx.cache.add("c3", 2, 99, SHA, 50.0)  # a known path keeps its slot
    assert slots(backend) == list(range(10))
    assert registry.read.cache.get("c3").size == 99
    with registry.transaction() as tx:
        assert tx.cache.remove("c2") and not tx.cache.remove("c2")
        tx.cache.remove("c9")
        tx.cache.touch([(100.0, "c0"), (0.5, "c1"), (100.0, "nothing")])
    assert slots(backend) == list(range(8))
    assert registry.read.cache.get("c0").last_access == 100.0
    assert registry.read.cache.get("c1").last_access == 1.0  # older: not overwritten
    counters = registry.read.counters
    assert counters.get("cache.entries") == 8
    assert counters.get("cache.bytes") == sum(e.size for e in registry.read.cache.page("", 99))
    drawn = registry.read.cache.sample(20, random.Random(1))
    assert 0 < len(drawn) <= 8 and len({e.path for e in drawn}) == len(drawn)
    assert [e.path for e in registry.read.cache.page("c5", 2)] == ["c6", "c7"]


def test_files_deleted_or_replaced_leave_the_cache_index(backend):
    registry = backend.registry
    for path in ("a", "b", "c"):
        version = put(registry, path, 5)
        with registry.transaction() as tx:
            tx.cache.add(path, version, 5, SHA, 0.0)
    with registry.transaction() as tx:
        tx.files.delete("a")
    put(registry, "b", 6)  # a new version: the entry of the old one goes
    assert [e.path for e in registry.read.cache.page("", 10)] == ["c"]
    assert slots(backend) == [0]


def test_pins_and_pinned_entries(backend):
    registry = backend.registry
    with registry.transaction() as tx:
        tx.pins.set_limit(100)
        assert tx.pins.add("m/", 1.0) and not tx.pins.add("m/", 2.0)
        tx.cache.add("m/a", 1, 30, SHA, 0.0)  # under a pin: pinned
        tx.cache.add("x", 1, 5, SHA, 0.0)
        tx.cache.add("m/b", 1, 80, SHA, 0.0)  # would pass the limit: an ordinary entry
    assert registry.read.pins.limit() == 100 and registry.read.pins.get("m/").created == 1.0
    assert registry.read.cache.get("m/a").pinned and not registry.read.cache.get("m/b").pinned
    assert dense(slots(backend))
    counters = registry.read.counters
    assert (counters.get("cache.pinned.entries"), counters.get("cache.pinned.bytes")) == (1, 30)
    with registry.transaction() as tx:
        assert tx.cache.pin_under("m/", "", 10) == (1, None)
    assert registry.read.cache.pinned_under("m/") == (2, 110) and dense(slots(backend))
    assert all(not e.pinned for e in registry.read.cache.sample(50, random.Random(2)))
    with registry.transaction() as tx:
        tx.cache.remove("x")  # every entry left is pinned: nothing to draw
    assert registry.read.cache.sample(5, random.Random(3)) == []
    with registry.transaction() as tx:
        assert tx.pins.remove("m/") and not tx.pins.remove("m/")
        assert tx.cache.unpin_under("m/", ["m/b"], "", 1) == (1, "m/a")
        assert tx.cache.unpin_under("m/", ["m/b"], "m/a", 1) == (0, "m/b")
    assert not registry.read.cache.get("m/a").pinned and registry.read.cache.get("m/b").pinned
    assert dense(slots(backend))
    assert (counters.get("cache.pinned.entries"), counters.get("cache.pinned.bytes")) == (1, 80)
    for path, size in (("m/a", 30), ("m/c/d", 4), ("n", 1)):
        put(registry, path, size)
    with registry.transaction() as tx:
        tx.files.mark_uploaded("m/c/d", "default", "k", "e", 4, 0.0)
    assert registry.read.pins.files_under(["m/", "m/c/"]) == (2, 34)
    assert [r.path for r in registry.read.cache.missing_under("m/", "", 10)] == ["m/c/d"]
    assert registry.read.pins.all() == []


# -- settings, counters, sessions, grants, samples ------------------------------------------------


def test_settings_and_their_generations(registry):
    with registry.transaction() as tx:
        tx.settings.save({"upload": {"delay": "5m"}, "remote": {"url": "s3://b"}}, False)
    read = registry.read.settings
    assert sorted(read.all()) == [("remote", "url", "s3://b"), ("upload", "delay", "5m")]
    assert read.generation() == (1, 0)
    with registry.transaction() as tx:
        tx.settings.save({"upload": {"delay": "1m"}}, True)
    assert ("upload", "delay", "1m") in read.all() and read.generation() == (2, 1)
    with registry.transaction() as tx:
        assert tx.settings.reset() == 2
    assert read.all() == [] and read.generation() == (3, 2)


def test_counters_read_and_added(registry):
    with registry.transaction() as tx:
        tx.counters.add({"cache.hits": 3, "cache.misses": 0, "cache.hit_bytes": 30})
        tx.counters.add({"cache.hits": 1, "no.such.counter": 5})  # only existing ones move
    read = registry.read.counters
    assert read.get("cache.hits") == 4 and read.get("no.such.counter") == 0
    assert read.with_prefix("cache.hit") == {"cache.hits": 4, "cache.hit_bytes": 30}
    assert set(read.with_prefix("queue.", "cache.pinned.")) == {
        "queue.upload.pending", "queue.upload.failed", "queue.delete.pending",
        "queue.delete.failed", "cache.pinned.entries", "cache.pinned.bytes"}
    assert read.all()["cache.hits"] == 4


def test_sessions(registry):
    with registry.transaction() as tx:
        tx.sessions.start("k1", 1.0, 100.0)
        tx.sessions.start("k2", 1.0, 5.0)
    read = registry.read.sessions
    assert read.active("k1", 2.0) and read.count(2.0) == 2 and not read.active("k2", 6.0)
    with registry.transaction() as tx:
        assert tx.sessions.end("k2") and not tx.sessions.end("k2")
        tx.sessions.start("k3", 3.0, 100.0)
        assert tx.sessions.end_all(4.0) == 2
    assert not read.active("k1", 5.0) and read.count(5.0) == 0
    with registry.transaction() as tx:
        tx.sessions.start("k4", 6.0, 100.0)  # the new generation's
    assert read.active("k4", 7.0) and read.count(7.0) == 1


def test_grants_one_request_per_url(registry):
    with registry.transaction() as tx:
        assert tx.grants.claim("n", 100.0, 1.0) is None
        assert tx.grants.claim("n", 100.0, 1.0) == "claimed"
    assert registry.read.grants.state("n") == "claimed"
    with registry.transaction() as tx:
        tx.grants.release("n")
        assert tx.grants.claim("n", 100.0, 2.0) is None
        tx.grants.spend("n", 3.0)
        assert tx.grants.claim("n", 100.0, 4.0) == "spent"
        tx.grants.release("n")  # spent stays spent
    assert registry.read.grants.state("n") == "spent"
    with registry.transaction() as tx:  # pruned an hour past its expiry
        assert tx.grants.claim("other", 1e9, 100.0 + 3601.0) is None
    assert registry.read.grants.state("n") is None


def test_samples_one_row_per_interval(registry):
    sample = Sample(10, 100.0, 1, 2, None, 3, 4, 5, 6, 7, 8, 9, 1.5)
    with registry.transaction() as tx:
        assert tx.samples.add(sample, 0.0)
        assert not tx.samples.add(sample._replace(time=101.0), 0.0)
        assert tx.samples.add(sample._replace(slot=11, time=110.0), 0.0)
    read = registry.read.samples
    assert read.has(10) and not read.has(12)
    assert read.since(0.0) == [sample, sample._replace(slot=11, time=110.0)]
    with registry.transaction() as tx:
        tx.samples.add(sample._replace(slot=12, time=120.0), 105.0)  # the window moves on
    assert [s.slot for s in read.since(0.0)] == [11, 12]


# -- accounts, tokens, storage, the S3 endpoint's tables ------------------------------------------


def test_accounts_and_their_usage(registry):
    put(registry, "acme/a", 5)
    put(registry, "acme/b", 7)
    put(registry, "acmex/c", 100)
    with registry.transaction() as tx:
        tx.files.mark_uploaded("acme/a", "cold", "k", "e", 5, 0.0)
        created = tx.accounts.create("acme", "Acme", 1000, 1.0)
    assert created.public() == {"id": "acme", "name": "Acme", "created": 1.0,
                                "state": "active", "quota": 1000}
    assert registry.read.accounts.usage("acme") == {
        "files": 2, "bytes": 12, "local.bytes": 7, "remote.bytes": 5, "remote.cold.bytes": 5}
    put(registry, "acme/b", 9)
    with registry.transaction() as tx:
        tx.files.mark_uploaded("acme/b", "cold", "k", "e", 9, 0.0)
        tx.files.delete("acme/a")
        updated = tx.accounts.update("acme", state="suspended", quota=5)
        assert tx.accounts.update("nobody", name="x") is None
    assert (updated.state, updated.quota, updated.name) == ("suspended", 5, "Acme")
    assert registry.read.accounts.usage("acme") == {
        "files": 1, "bytes": 9, "local.bytes": 0, "remote.bytes": 9, "remote.cold.bytes": 9,
        "uploads": 1}
    with registry.transaction() as tx:
        tx.accounts.create("b", "B", 0, 2.0)
        tx.tokens.add("acme", "default", "h1", 1.0)
        tx.tokens.add("acme", "ci", "h2", 2.0)
        tx.s3_keys.add("AK", "acme", "enc:v1:x", 3.0)
        tx.buckets.add("acme", "photos", 3.0)
        tx.account_storage.save("acme", '{"r": {}}', "[]", True)
    assert [a.id for a in registry.read.accounts.page("", 10)] == ["acme", "b"]
    assert [a.id for a in registry.read.accounts.page("acme", 10)] == ["b"]
    generation = registry.read.settings.generation()
    with registry.transaction() as tx:
        assert tx.accounts.delete("acme") and not tx.accounts.delete("acme")
    assert registry.read.accounts.get("acme") is None
    assert registry.read.accounts.usage("acme") == {}
    assert registry.read.tokens.holder("h1") is None and registry.read.s3_keys.get("AK") is None
    assert registry.read.buckets.listing("acme") == []
    assert registry.read.account_storage.get("acme") is None
    assert registry.read.settings.generation() > generation  # its storage was forgotten


def test_tokens(registry):
    with registry.transaction() as tx:
        tx.accounts.create("acme", "Acme", 0, 1.0)
        tx.tokens.add("acme", "default", "h1", 1.0)
        tx.tokens.add("acme", "ci", "h2", 2.0)
    read = registry.read.tokens
    account, name = read.holder("h2")
    assert (account.id, name) == ("acme", "ci") and read.holder("nope") is None
    assert [t.name for t in read.listing("acme")] == ["ci", "default"]
    with registry.transaction() as tx:
        tx.tokens.used({"h1": 50.0, "h2": 40.0})
        tx.tokens.used({"h1": 45.0})  # older: kept
    assert read.named("acme", "default").last_used == 50.0
    with registry.transaction() as tx:
        assert tx.tokens.revoke("acme", "ci") and not tx.tokens.revoke("acme", "ci")
    assert read.named("acme", "ci") is None


def test_account_storage(registry):
    generation = registry.read.settings.generation()
    with registry.transaction() as tx:
        tx.account_storage.save("a", '{"r": {"url": "s3://x"}}', '[{"prefix": "a/"}]', True)
        tx.account_storage.save("b", "{}", '[{"prefix": "b/"}]', False)
    read = registry.read.account_storage
    assert read.get("a") == ('{"r": {"url": "s3://x"}}', '[{"prefix": "a/"}]')
    assert [row[0] for row in read.all()] == ["a", "b"]
    assert registry.read.settings.generation() == (generation[0] + 2, generation[1] + 1)
    with registry.transaction() as tx:
        tx.account_storage.save("a", "{}", "[]", True)  # nothing left: forgotten
    assert read.get("a") is None


def test_s3_keys_buckets_uploads_and_objects(registry):
    with registry.transaction() as tx:
        tx.s3_keys.add("AK2", "", "enc:2", 2.0)
        tx.s3_keys.add("AK1", "", "enc:1", 1.0)
        assert tx.buckets.add("", "b", 1.0) and not tx.buckets.add("", "b", 2.0)
        tx.buckets.add("", "a", 3.0)
        for n, key in enumerate(("k/2", "k/1", "other")):
            tx.uploads.create(Upload(f"u{n}", "", "b", key, f"b/{key}", "text/plain",
                                     None, float(n)))
    assert registry.read.s3_keys.get("AK1") == ("", "enc:1", 1.0)
    assert registry.read.s3_keys.listing("") == [("AK1", 1.0), ("AK2", 2.0)]
    assert registry.read.buckets.get("", "b") == 1.0 and registry.read.buckets.get("", "z") is None
    assert registry.read.buckets.listing("") == [("a", 3.0), ("b", 1.0)]
    uploads = registry.read.uploads
    assert [u.upload_id for u in uploads.listing("", "b", "k/", ("", ""), 10)] == ["u1", "u0"]
    assert [u.upload_id for u in uploads.listing("", "b", "k/", ("k/1", "u1"), 10)] == ["u0"]
    assert uploads.older_than(1.5, 10) == ["u0", "u1"] and uploads.ids() == {"u0", "u1", "u2"}
    assert uploads.get("u1").path == "b/k/1"
    with registry.transaction() as tx:
        assert tx.uploads.put_part("u0", Part(1, 5, "m1", "p1", 1.0)) is None
        assert tx.uploads.put_part("u0", Part(2, 6, "m2", "p2", 1.0)) is None
        assert tx.uploads.put_part("u0", Part(1, 7, "m3", "p3", 2.0)) == "p1"
        tx.uploads.set_object("b/k/2", SHA, '"etag-2"', '{"a": "b"}')
        tx.uploads.set_object("b/x", SHA, None, None)
    assert uploads.parts("u0") == [Part(1, 7, "m3", "p3", 2.0), Part(2, 6, "m2", "p2", 1.0)]
    assert uploads.parts("u0", after=1, limit=5) == [Part(2, 6, "m2", "p2", 1.0)]
    assert uploads.objects(["b/k/2", "b/x"]) == {"b/k/2": (SHA, '"etag-2"', '{"a": "b"}')}
    assert uploads.objects([]) == {}
    with registry.transaction() as tx:
        assert tx.uploads.delete("u0") and not tx.uploads.delete("u0")
        tx.uploads.set_object("b/k/2", SHA, None, None)
        assert tx.s3_keys.revoke("", "AK1") and tx.buckets.delete("", "a")
    assert uploads.parts("u0") == [] and uploads.objects(["b/k/2"]) == {}
    assert registry.read.s3_keys.listing("") == [("AK2", 2.0)]


def test_part_bytes_add_up_every_open_upload_under_a_prefix(registry):
    """One query for the parts of all of an account's open uploads (its quota's), the part a
    new one replaces left out."""
    with registry.transaction() as tx:
        for upload_id, path in (("u1", "acme/b/x"), ("u2", "acme/c/y"), ("u3", "acmeco/b/z"),
                                ("u4", "acme/b/none")):
            tx.uploads.create(Upload(upload_id, "acme", "b", path, path, None, None, 1.0))
        for upload_id, number, size in (("u1", 1, 5), ("u1", 2, 7), ("u2", 1, 11),
                                        ("u3", 1, 13)):
            tx.uploads.put_part(upload_id, Part(number, size, "m", f"f{number}", 1.0))
    uploads = registry.read.uploads
    assert uploads.part_bytes("acme/", "u1", 3) == {"u1": 12, "u2": 11}  # not acmeco's
    assert uploads.part_bytes("acme/", "u1", 2) == {"u1": 5, "u2": 11}  # part 2 replaced
    assert uploads.part_bytes("acme/", "u2", 1) == {"u1": 12}
    assert uploads.part_bytes("acme/b/", "u9", 1) == {"u1": 12}
    assert uploads.part_bytes("bob/", "u1", 1) == {}
    with registry.transaction() as tx:
        tx.uploads.delete("u1")
        assert tx.uploads.part_bytes("acme/", "u2", 9) == {"u2": 11}  # gone with its upload


# -- counters kept by the triggers, against a recount, and both backends alike --------------------

PATHS = ["a", "b/c", "acme/x", "acme/y/z", "m/p", "m/q/r", "free/k"]
REMOTES = ["default", "cold"]
PINS = ["m/", "acme/"]
OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(PATHS), st.integers(0, 1000)),
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("upload"), st.sampled_from(PATHS), st.sampled_from(REMOTES)),
    st.tuples(st.just("local"), st.sampled_from(PATHS)),
    st.tuples(st.just("queue"), st.sampled_from(PATHS), st.sampled_from(["upload", "delete"])),
    st.tuples(st.just("work"), st.sampled_from(["finish", "fail", "retry", "release"])),
    st.tuples(st.just("cache"), st.sampled_from(PATHS)),
    st.tuples(st.just("uncache"), st.sampled_from(PATHS)),
    st.tuples(st.just("pin"), st.sampled_from(PINS)),
    st.tuples(st.just("unpin"), st.sampled_from(PINS)),
    st.tuples(st.just("account"), st.sampled_from(["acme", "m", "free"])),
    st.tuples(st.just("forget"), st.sampled_from(REMOTES)),
)


def apply(registry: Any, op: tuple[Any, ...], now: float) -> None:
    """One step of a workload, as the store, the queue and the cache would take it."""
    kind, *args = op
    with registry.transaction() as tx:
        record = tx.files.get(args[0]) if kind in ("delete", "upload", "local", "queue",
                                                   "cache") else None
        if kind == "put":
            version = tx.files.upsert(args[0], args[1], SHA, "t", 1, now)[1].version
            tx.queue.schedule(args[0], "upload", version, "default", now + 10, now)
        elif kind == "delete" and record is not None:
            tx.files.delete(args[0])
            tx.queue.schedule(args[0], "delete", record.version, "default", now, now)
        elif kind == "upload" and record is not None:
            tx.files.mark_uploaded(args[0], args[1], args[0], "e", record.size, now)
            tx.queue.drop(args[0])
        elif kind == "local" and record is not None:
            tx.files.mark_local(args[0], 2)
        elif kind == "queue":
            tx.queue.schedule(args[0], args[1], record.version if record else 1, "cold", now,
                              now)
        elif kind == "work":
            # Everything due, decided by path: the same on both backends whatever the order.
            for entry in tx.queue.lease_due("w", now + 20, now + 30, 100):
                if args[0] == "finish":
                    tx.queue.finish(entry)
                elif args[0] == "fail":
                    tx.queue.fail(entry, "x", None if len(entry.path) % 2 else now + 1, now)
                else:
                    tx.queue.release(entry)
            if args[0] == "retry":
                tx.queue.retry(None, now)
        elif kind == "cache" and record is not None:
            tx.cache.add(args[0], record.version, record.size, SHA, now)
        elif kind == "uncache":
            tx.cache.remove(args[0])
        elif kind == "pin":
            tx.pins.set_limit(1500)
            tx.pins.add(args[0], now)
            tx.cache.pin_under(args[0], "", 100)
        elif kind == "unpin":
            tx.pins.remove(args[0])
            tx.cache.unpin_under(args[0], [p.prefix for p in tx.pins.all()], "", 100)
        elif kind == "account":
            if tx.accounts.get(args[0]) is None:
                tx.accounts.create(args[0], args[0], 0, now)
            else:
                tx.accounts.delete(args[0])
        elif kind == "forget":
            tx.files.forget_copies_in(args[0])


RECOUNTED = ("files", "bytes", "queue.", "unprotected.bytes", "cache.entries", "cache.bytes",
             "cache.pinned.", "account.")


def recount(registry: Any) -> dict[str, int]:
    """The counters the triggers keep, counted from the rows themselves."""
    read = registry.read
    files = read.files.page("", 10_000)
    sizes = {f.path: f.size for f in files}
    accounts = {a.id for a in read.accounts.page("", 1000)}
    found: dict[str, int] = {}

    def add(name: str, value: int) -> None:
        found[name] = found.get(name, 0) + value

    for f in files:
        remote = f.location == "remote" and f.remote is not None
        for kind, value in (("files", 1), ("bytes", f.size)):
            add(kind, value)
            add(f"{kind}.{f.location}", value)
            if remote:
                add(f"{kind}.remote.{f.remote}", value)
        account, slash, _ = f.path.partition("/")
        if slash and account in accounts:
            prefix = f"account.{account}."
            add(prefix + "files", 1)
            add(prefix + "bytes", f.size)
            add(f"{prefix}{f.location}.bytes", f.size)
            if remote:
                add(f"{prefix}remote.{f.remote}.bytes", f.size)
    for entry in read.queue.listing():
        add(f"queue.{entry.op}.{entry.state}", 1)
        if entry.op == "upload":
            add("unprotected.bytes", sizes.get(entry.path, 0))
    for cached in read.cache.page("", 10_000):
        add("cache.entries", 1)
        add("cache.bytes", cached.size)
        if cached.pinned:
            add("cache.pinned.entries", 1)
            add("cache.pinned.bytes", cached.size)
    return found


def assert_counted(backend: Backend) -> None:
    kept = {name: value for name, value in backend.registry.read.counters.all().items()
            if name.startswith(RECOUNTED) and not name.endswith(".uploads")}
    counted = recount(backend.registry)
    names = set(kept) | set(counted)
    assert {n: kept.get(n, 0) for n in names} == {n: counted.get(n, 0) for n in names}
    assert dense(slots(backend))


# Counted by one backend only: PostgreSQL's local-only files per holder node (migration 13).
ONE_BACKEND = ("local.",)


def state(registry: Any) -> tuple[Any, ...]:
    read = registry.read
    counters = {name: value for name, value in read.counters.all().items()
                if not name.startswith(ONE_BACKEND)}
    return (read.files.page("", 10_000), list(read.queue.listing()),
            read.cache.page("", 10_000), counters, read.accounts.page("", 100))


@pytest.fixture
def both(tmp_path: Path, pg_registry_url: str) -> Any:
    made = [Backend("sqlite", tmp_path), Backend("postgres", tmp_path, pg_registry_url)]
    yield made
    for backend in made:
        backend.registry.close()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(workload=st.lists(OPS, min_size=20, max_size=40))
def test_counters_equal_a_recount_and_both_backends_agree(both, workload):
    """A random workload on both backends: each one's counters equal a recount of its rows,
    its cache slots stay dense, and both end in the same state, counter for counter."""
    clock = max(b.registry.read.counters.get("seq.version") for b in both) * 100.0
    for step, op in enumerate(workload):
        for backend in both:
            apply(backend.registry, op, clock + step)
    for backend in both:
        assert_counted(backend)
    sqlite, postgres = (state(b.registry) for b in both)
    assert sqlite == postgres


# -- choosing the backend, and what only SQLite does ----------------------------------------------


def config(tmp_path: Path, **env: str) -> Any:
    (tmp_path / "data").mkdir(exist_ok=True)
    environ = {"FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "data"),
               **{f"FILESTORE_{k.upper()}": v for k, v in env.items()}}
    return load_settings(None, environ=environ)


def test_the_url_picks_the_backend(tmp_path, pg_url):
    sqlite = open_registry(config(tmp_path))
    postgres = open_registry(config(tmp_path, registry__url=pg_url, registry__pool_size="2"))
    try:
        assert isinstance(sqlite, SqliteRegistry) and isinstance(postgres, PostgresRegistry)
        postgres.migrate()
        assert postgres.schema_version() == SCHEMA_VERSION
    finally:
        sqlite.close()
        postgres.close()
    with pytest.raises(ConfigError, match=r"registry\.url"):
        open_registry(config(tmp_path, registry__url="mysql://x@y/z"))


def test_sqlite_only_features_are_one_line_refusals(tmp_path, pg_url):
    registry = PostgresRegistry(pg_url)
    try:
        with pytest.raises(ConfigError, match="pg_dump") as refused:
            registry.backup(tmp_path / "copy")
        assert "\n" not in str(refused.value)
    finally:
        registry.close()
    with pytest.raises(ConfigError, match="use pg_restore"):
        require_sqlite(config(tmp_path, registry__url=pg_url), "filestore restore", "pg_restore")
    require_sqlite(config(tmp_path), "filestore restore", "pg_restore")  # SQLite: fine


def test_the_password_is_never_shown(postgres, pg_url):
    """Not in a refusal to connect, nor in the registry's repr, nor in its messages."""
    password = "s3cr3t-pw-value"
    unreachable = f"postgresql://filestore:{password}@127.0.0.1:1/db"
    with pytest.raises(ConfigError) as refused:
        PostgresRegistry(unreachable)
    assert password not in str(refused.value) and "***" in str(refused.value)
    assert "\n" not in str(refused.value)
    in_query = f"postgresql://filestore@127.0.0.1:1/db?password={password}"
    with pytest.raises(ConfigError) as refused:
        PostgresRegistry(in_query)
    assert password not in str(refused.value)
    with pytest.raises(ConfigError) as garbled:
        PostgresRegistry(f"postgresql://u:{password}@127.0.0.1:{postgres.port}/db?bad=x=y")
    assert password not in str(garbled.value)
    # A server that trusts local logins ignores the password: the URL carries one anyway.
    with_password = pg_url.replace("@", f":{password}@", 1)
    registry = PostgresRegistry(with_password, read_only=True)
    try:
        assert password not in repr(registry) and password not in registry.where
        with pytest.raises(ConfigError) as backup:
            registry.backup(Path("x"))
        assert password not in str(backup.value)
    finally:
        registry.close()


def test_a_reader_reconnects_after_its_connection_dropped(pg_registry_url):
    pg_url = pg_registry_url
    registry = PostgresRegistry(pg_url)
    try:
        put(registry, "a", 2)
        pid = registry.read._link.value("SELECT pg_backend_pid()")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(RegistryUnavailable):
            registry.read.files.get("a")  # the statement that finds it gone fails
        assert registry.read.files.get("a").size == 2  # the next one reconnects
        with registry.transaction() as tx:  # and the pool hands out live connections
            tx.files.upsert("b", 1, SHA, "t", 1, 0.0)
    finally:
        registry.close()


def test_commands_on_a_postgresql_registry(tmp_path, pg_url):
    """The CLI opens the configured registry; `backup` is refused in one line."""
    from click.testing import CliRunner

    from filestore.cli import main

    env = {"FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "data"), "FILESTORE_CONFIG": "",
           "FILESTORE_REGISTRY__URL": pg_url}

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=env)

    assert run("token").exit_code == 0  # the first command prepares the registry
    stats = run("stats", "--json")  # read-only
    assert stats.exit_code == 0 and '"files"' in stats.output
    assert run("settings", "reset").output.strip() == "settings: forgot 0 saved values"
    refused = run("backup", str(tmp_path / "copy"))
    assert refused.exit_code == 2 and "pg_dump" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "copy").exists()
    assert not (tmp_path / "data" / "registry.sqlite3").exists()


def test_only_the_registry_imports_psycopg():
    outside = [path for path in PACKAGE.rglob("*.py") if PACKAGE / "registry" not in path.parents]
    offenders = [str(path.relative_to(PACKAGE)) for path in outside
                 if any(line.lstrip().startswith(("import psycopg", "from psycopg"))
                        for line in path.read_text().splitlines())]
    assert len(outside) > 40 and not offenders


# -- end to end: a real server on a PostgreSQL registry -------------------------------------------


@pytest.mark.timeout(90)
def test_a_server_on_a_postgresql_registry(make_server, tmp_path, pg_url):
    """PUT, GET, the upload to the embedded remote, DELETE and the remote delete, on a server
    whose registry is a PostgreSQL database; the statistics follow every step."""
    server = make_server(registry__url=pg_url, upload__delay="0")
    registry = server.store.registry
    assert isinstance(registry, PostgresRegistry)
    assert not (tmp_path / "data" / "registry.sqlite3").exists()
    body = b"hello postgres " * 1000
    with server.client() as client:
        put = client.put("/files/docs/a.txt", content=body, headers={"content-type": "text/x"})
        assert put.status_code == 201, put.text
        assert client.put("/files/docs/b.txt", content=b"bee").status_code == 201
        got = client.get("/files/docs/a.txt")
        assert (got.status_code, got.content, got.headers["content-type"]) == (
            200, body, "text/x")
        assert [i["path"] for i in client.get("/files/?prefix=docs/").json()["items"]] == [
            "docs/a.txt", "docs/b.txt"]
        wait_for(lambda: all(registry.read.files.get(p).uploaded
                             for p in ("docs/a.txt", "docs/b.txt")), timeout=30)
        remote = tmp_path / "data" / "remote"
        assert (remote / "docs" / "a.txt").read_bytes() == body
        stats = client.get("/admin/api/stats").json()
        assert stats["files"]["count"] == 2 and stats["files"]["bytes"] == len(body) + 3
        assert stats["files"]["remote"] == {"count": 2, "bytes": len(body) + 3}
        assert stats["uploads"] == {"done": 2, "bytes": len(body) + 3}
        assert stats["queue"]["upload"]["pending"] == 0
        got = client.get("/files/docs/a.txt")  # now read through the cache area
        assert got.status_code == 200 and got.content == body
        assert client.delete("/files/docs/a.txt").status_code == 204
        assert client.get("/files/docs/a.txt").status_code == 404
        wait_for(lambda: not (remote / "docs" / "a.txt").exists(), timeout=30)
        wait_for(lambda: registry.read.queue.get("docs/a.txt") is None, timeout=30)
        stats = client.get("/admin/api/stats").json()
        assert stats["files"]["count"] == 1 and stats["files"]["bytes"] == 3
        assert stats["queue"]["delete"] == {"pending": 0, "failed": 0}
        assert client.get("/readyz").status_code == 200
    backend = Backend.__new__(Backend)
    backend.kind, backend.url, backend.registry = "postgres", pg_url, registry
    assert_counted(backend)
