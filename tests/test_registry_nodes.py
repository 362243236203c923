"""What stays per node in a PostgreSQL registry several nodes share (migration 13): each node's
cache index, slots and counters, its view of a file's inode, its intents and leases; the holder
and replica of local bytes, who may lease their upload, and the stale bytes a change on one
node lists for the others. Three registries on one database, one per node name."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from filestore.registry.postgres import PostgresRegistry

pytest_plugins = ["pg"]
pytestmark = pytest.mark.timeout(60)

SHA = "0" * 64


@pytest.fixture
def nodes(pg_registry_url: str) -> Iterator[dict[str, PostgresRegistry]]:
    made = {name: PostgresRegistry(pg_registry_url, node=name, pool_size=2)
            for name in ("a", "b", "c")}
    yield made
    for registry in made.values():
        registry.close()


def put(registry: PostgresRegistry, path: str, size: int = 10, inode: int = 1,
        replica: str = "") -> int:
    with registry.transaction() as tx:
        return tx.files.upsert(path, size, SHA, "text/plain", inode, 0.0, None, replica)[1].version


def stale(registry: PostgresRegistry) -> list[str]:
    return registry.read.stale.pending(100)


def sql(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_each_node_has_its_own_cache_index_slots_and_counters(nodes, pg_registry_url):
    a, b = nodes["a"], nodes["b"]
    for i in range(5):
        version = put(a, f"f{i}", size=100 + i)
        for registry in (a, b) if i % 2 == 0 else (a,):
            with registry.transaction() as tx:
                tx.cache.add(f"f{i}", version, 100 + i, SHA, float(i), inode=1000 + i)
    assert [e.path for e in a.read.cache.page("", 100)] == [f"f{i}" for i in range(5)]
    assert [e.path for e in b.read.cache.page("", 100)] == ["f0", "f2", "f4"]
    assert a.read.counters.get("cache.entries") == 5
    assert b.read.counters.get("cache.bytes") == 100 + 102 + 104
    assert nodes["c"].read.counters.get("cache.bytes") == 0
    assert nodes["c"].read.cache.sample(5, random.Random(1)) == []
    for name in ("a", "b"):  # dense slots 0..n-1 on each node
        slots = sorted(s for (s,) in sql(pg_registry_url,
                                         f"SELECT slot FROM cache_entries WHERE node = '{name}'"))
        assert slots == list(range(len(slots)))
    with a.transaction() as tx:
        assert tx.cache.remove("f0")
    assert b.read.cache.get("f0") is not None  # another node's entry stays
    slots = sorted(s for (s,) in sql(pg_registry_url,
                                     "SELECT slot FROM cache_entries WHERE node = 'a'"))
    assert slots == [0, 1, 2, 3]
    # A node's view of the inode: the holder's own, else its cached copy's, else none.
    assert a.read.files.get("f2").inode == 1  # a holds it
    assert b.read.files.get("f2").inode == 1002
    assert nodes["c"].read.files.get("f2").inode == 0


def test_only_a_holder_leases_an_upload_and_each_node_clears_its_own_leases(nodes):
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    version = put(a, "up")
    other = put(b, "other", replica="c")
    with a.transaction() as tx:
        tx.queue.schedule("up", "upload", version, "default", 0.0, 0.0)
        tx.queue.schedule("other", "upload", other, "default", 0.0, 0.0)
        tx.queue.schedule("gone", "delete", 1, "default", 0.0, 0.0)
    assert b.read.queue.next_due(10.0) == 0.0  # "other" (b holds it) and the delete
    with b.transaction() as tx:
        leased = {e.path for e in tx.queue.lease_due("b:1:x", 10.0, 100.0, 10)}
    assert leased == {"other", "gone"}
    with c.transaction() as tx:  # c keeps a copy of "other", leased by b already
        assert tx.queue.lease_due("c:1:x", 10.0, 100.0, 10) == []
    with a.transaction() as tx:
        assert [e.path for e in tx.queue.lease_due("a:1:x", 10.0, 100.0, 10)] == ["up"]
    with b.transaction() as tx:
        tx.queue.clear_leases()  # b restarted: its leases go, a's stay
    assert a.read.queue.get("up").lease_owner == "a:1:x"
    assert a.read.queue.get("other").lease_owner is None
    with c.transaction() as tx:  # the replica may take it now (and the delete, anyone)
        assert {e.path for e in tx.queue.lease_due("c:1:x", 10.0, 100.0, 10)} == {"other",
                                                                                  "gone"}


def test_changes_list_the_bytes_other_nodes_must_drop(nodes):
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    version = put(a, "x")
    with c.transaction() as tx:
        tx.cache.add("x", version, 10, SHA, 0.0, inode=7)
    assert stale(a) == stale(b) == stale(c) == []
    put(b, "x")  # a re-PUT on b: a's local bytes and c's cached copy are superseded
    assert stale(a) == ["x"] and stale(c) == ["x"] and stale(b) == []
    assert c.read.cache.get("x") is None and c.read.counters.get("cache.entries") == 0
    with a.transaction() as tx:
        tx.stale.remove("x")
    assert stale(a) == [] and stale(c) == ["x"]
    put(b, "y", replica="c")
    with a.transaction() as tx:  # a DELETE on a of what b holds and c keeps a copy of
        assert tx.files.delete("y")
    assert stale(b) == ["y"] and set(stale(c)) == {"x", "y"}
    put(a, "z", replica="b")
    with c.transaction() as tx:  # uploaded (by either): the copies are no longer needed
        tx.files.mark_uploaded("z", "default", "fs/z", "etag", 10, 1.0)
    assert "z" in stale(a) and "z" in stale(b)


def test_intents_and_local_counters_are_per_node(nodes, pg_registry_url):
    a, b = nodes["a"], nodes["b"]
    with a.transaction() as tx:
        tx.intents.add("put", "p", "/a/tmp/put-1", 5, SHA, "text/plain")
    assert [i.path for i in a.read.intents.all()] == ["p"]
    assert b.read.intents.all() == [] and not b.read.intents.writing("p")
    put(a, "one", size=3)
    put(a, "two", size=4)
    put(b, "three", size=5)
    put(b, "one", size=6)  # moves from a to b
    counted = dict(((node, name), int(value)) for node, name, value in sql(
        pg_registry_url, "SELECT node, name, value FROM node_counters WHERE name LIKE 'local.%'"))
    recount = sql(pg_registry_url, "SELECT holder, count(*), sum(size) FROM files "
                                   "WHERE location = 'local' GROUP BY holder")
    for holder, files, size in recount:
        assert counted[(holder, "local.files")] == files
        assert counted[(holder, "local.bytes")] == size
    assert a.read.nodes.figures("a", 0.0).local_files == 1
    assert b.read.nodes.figures("b", 0.0).local_bytes == 11


def test_a_put_whose_commit_was_lost_is_recorded_while_the_node_runs(tmp_path,
                                                                      pg_registry_url):
    """The registry went away at COMMIT, after the rename of a re-PUT: the node records the
    bytes on its disk (the rename replaced the old version's) without waiting for a restart,
    as start-up recovery would; an intent another node left is not this node's to finish, and
    a cut PUT of a path another node changed since is dropped."""
    import hashlib

    import anyio

    from filestore import recovery
    from filestore.config import load_settings
    from filestore.store import Store

    settings = load_settings(None, environ={
        "FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "d"), "FILESTORE_REGISTRY__URL":
        pg_registry_url, "FILESTORE_CLUSTER__NODE": "a", "FILESTORE_STORAGE__MIN_FREE": "0"})
    store = Store(settings)
    other = PostgresRegistry(pg_registry_url, node="b")
    try:
        anyio.run(lambda: store.put("lost.txt", _chunks(b"old"), content_type=None,
                                    content_length=None))
        body = b"renamed, never recorded"
        tmp = store.local.tmp_dir / "put-lost"
        tmp.write_bytes(body)
        digest = hashlib.sha256(body).hexdigest()
        with store.registry.transaction() as tx:
            tx.intents.add("put", "lost.txt", str(tmp), len(body), digest, "text/plain")
        with other.transaction() as tx:  # b's, naming a temp file b's disk no longer has
            tx.intents.add("put", "theirs.txt", str(tmp_path / "gone"), 1, SHA, "text/plain")
        os.replace(tmp, store.local.path_of("lost.txt"))
        assert recovery.interrupted(store) == 1
        record = store.lookup("lost.txt")
        assert (record.sha256, record.holder) == (digest, "a")
        assert store.registry.read.intents.all() == []
        assert [i.path for i in other.read.intents.all()] == ["theirs.txt"]
        assert recovery.interrupted(store) == 0
        # A cut re-PUT here, then a PUT on b acknowledged: b's wins, the cut bytes go.
        tmp.write_bytes(b"cut")
        with store.registry.transaction() as tx:
            tx.intents.add("put", "lost.txt", str(tmp), 3, hashlib.sha256(b"cut").hexdigest(),
                           "text/plain")
        os.replace(tmp, store.local.path_of("lost.txt"))
        put(other, "lost.txt", size=5)
        assert recovery.interrupted(store) == 1
        assert store.lookup("lost.txt").holder == "b"
        assert not store.local.path_of("lost.txt").exists()
    finally:
        other.close()
        store.close()


async def _chunks(data: bytes) -> Any:
    yield data


def test_heartbeats_are_judged_by_the_servers_clock(nodes, pg_registry_url, monkeypatch):
    """A node whose clock is far behind still beats "now": the beat and the age of every row
    come from PostgreSQL's clock, so no node looks dead (or alive) for its clock alone."""
    from filestore.cluster import heartbeat

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 1000)  # this node's clock: 1000 s late
    store = SimpleNamespace(registry=nodes["a"], shared=True,
                            settings=SimpleNamespace(node="a", advertise="http://a"))
    heart = heartbeat.Heart(store, started=real())  # type: ignore[arg-type]
    try:
        heart.beat()
    finally:
        heart.close()
    (server_now,) = sql(pg_registry_url, "SELECT extract(epoch FROM clock_timestamp())")[0]
    row = nodes["b"].read.nodes.get("a")
    assert row is not None
    assert abs(row.heartbeat - float(server_now)) < 5
    assert row.alive(30) and row.age < 5
    with nodes["b"].transaction() as tx:
        tx.nodes.beat("old", "http://old", 0, float(server_now) - 100)
    old = nodes["c"].read.nodes.get("old")
    assert old is not None and 95 < old.age < 110 and not old.alive(30)


def test_forgetting_a_node_drops_its_cache_index_and_keeps_what_its_disk_needs(nodes):
    a, b = nodes["a"], nodes["b"]
    held = put(a, "held/x", size=7)  # a local-only file node a holds
    version = put(b, "cached/y", size=30)
    with a.transaction() as tx:
        tx.nodes.beat("a", "http://a", 0)
        tx.cache.add("cached/y", version, 30, SHA, 1.0, inode=5)
        tx.intents.add("put", "held/z", "/tmp/t", 1, SHA, "text/plain")
    assert a.read.counters.get("cache.bytes") == 30
    with b.transaction() as tx:
        assert tx.nodes.forget("a")
        assert not tx.nodes.forget("a")
    assert b.read.nodes.get("a") is None
    assert a.read.cache.get("cached/y") is None
    assert a.read.counters.get("cache.entries") == 0 and a.read.counters.get("cache.bytes") == 0
    # Still a's: its file (the bytes are only on its disk), its local counters, its intent.
    record = b.read.files.get("held/x")
    assert record is not None and record.holder == "a" and record.version == held
    assert a.read.counters.get("local.files") == 1
    assert [i.path for i in a.read.intents.all()] == ["held/z"]
