"""The cache's index, size bound and eviction, pass-through reads, far ranges, start-up repair,
fills shared between servers on one data directory, and the statistics."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
from typing import Any

import httpx
import pytest
from conftest import counters, file_row, registry_db, s3_overrides, uploaded, wait_for
from faults import FaultProxy
from test_cache import evict, uploaded_server

MiB = 1024 * 1024


def index_rows(server: Any) -> dict[str, int]:
    with contextlib.closing(registry_db(server)) as conn:
        return dict(conn.execute("SELECT path, size FROM cache_entries").fetchall())


def cache_files(server: Any) -> dict[str, int]:
    """What the cache area holds (the GC may unlink a file while this walks)."""
    root = server.settings.data_dir / "cache"
    found = {}
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


def tmp_files(server: Any) -> list[str]:
    return sorted(p.name for p in (server.settings.data_dir / "tmp").iterdir())


def wait_too_large_evicted(server: Any) -> None:
    """An uploaded file larger than the whole cache enters it, and the GC takes it out."""
    wait_for(lambda: counters(server)["cache.evictions"] >= 1 and index_rows(server) == {})


def put_all(server: Any, bodies: dict[str, bytes]) -> None:
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    for path in bodies:
        wait_for(lambda p=path: uploaded(server, p))  # type: ignore[misc]


def test_the_index_follows_uploads_replacements_and_deletes(make_server):
    server = uploaded_server(make_server, "i/a.bin", b"a" * 1000)
    wait_for(lambda: index_rows(server) == {"i/a.bin": 1000})  # moved there by the upload
    assert counters(server)["cache.entries"] == 1 and counters(server)["cache.bytes"] == 1000
    with server.client() as client:
        client.put("/files/i/a.bin", content=b"b" * 10)  # local again: not the cache's
        assert index_rows(server) == {}
        wait_for(lambda: index_rows(server) == {"i/a.bin": 10})
        assert client.delete("/files/i/a.bin").status_code == 204
    assert index_rows(server) == {} and cache_files(server) == {}
    assert counters(server)["cache.entries"] == 0 and counters(server)["cache.bytes"] == 0


def test_uploads_beyond_the_budget_are_evicted_down_to_it(make_server):
    server = make_server(upload__delay="0s", cache__max_size="3MiB")
    bodies = {f"u/{i}.bin": os.urandom(MiB) for i in range(6)}
    put_all(server, bodies)
    # Uploaded is recorded before the bytes move into the cache area (a rename, then the
    # index row's commit): wait until every move and eviction has settled.
    files = server.settings.data_dir / "files"
    wait_for(lambda: not any(files.rglob("*.bin")) and counters(server)["cache.bytes"] <= 3 * MiB
             and cache_files(server) == index_rows(server))
    assert sum(cache_files(server).values()) <= 3 * MiB
    wait_for(lambda: counters(server)["cache.evictions"] >= 3)
    with server.client() as client:  # every file still reads, from the cache or the cloud
        for path, body in bodies.items():
            assert client.get(f"/files/{path}").content == body


def test_a_random_workload_stays_within_the_budget(make_server):
    server = make_server(upload__delay="0s", cache__max_size="2500KiB")
    rng = random.Random(7)
    bodies = {f"w/{i}.bin": rng.randbytes(rng.randint(100_000, MiB)) for i in range(10)}
    put_all(server, bodies)
    budget = server.settings.cache.max_size
    # Uploaded files enter the cache as they are moved there; the GC's next round (within a
    # second) brings it back under the budget.
    wait_for(lambda: sum(cache_files(server).values()) <= budget)
    with server.client() as client:
        for _ in range(40):
            path = rng.choice(list(bodies))
            assert client.get(f"/files/{path}").content == bodies[path]
            # A fill makes room before it starts, so even while it runs the bound holds.
            assert sum(cache_files(server).values()) <= budget
    wait_for(lambda: not [n for n in tmp_files(server) if n.startswith("fill-")])
    assert counters(server)["cache.bytes"] <= budget
    assert cache_files(server) == index_rows(server)
    wait_for(lambda: counters(server)["cache.evictions"] > 0)


def test_an_entry_being_read_is_never_evicted(make_server):
    # sample = 64 draws every entry, so the GC would pick the least recently read one: the
    # entry being read, made the oldest on purpose.
    server = make_server(upload__delay="0s", cache__max_size="40MiB", cache__sample="64")
    big = os.urandom(32 * MiB)
    put_all(server, {"held.bin": big})
    with server.client() as client, client.stream("GET", "/files/held.bin") as held:
        chunks = held.iter_raw()
        first = next(chunks)  # the response holds its fd open until the client reads on
        r = client.post("/admin/api/files/held.bin/evict")
        assert r.status_code == 409 and r.json()["error"] == "in_use"
        others = {f"o/{i}.bin": os.urandom(4 * MiB) for i in range(4)}
        put_all(server, others)  # 32 + 16 MiB: over the budget, so the GC must evict
        wait_for(lambda: counters(server)["cache.evictions"] >= 2)
        assert "held.bin" in cache_files(server)
        assert counters(server)["cache.bytes"] > 40 * MiB - 4 * MiB  # nothing else to take
        assert first + b"".join(chunks) == big
    # Read to the end and closed: now it may go, and as the least recently read, it does.
    put_all(server, {"o/last.bin": os.urandom(4 * MiB)})
    wait_for(lambda: "held.bin" not in cache_files(server))
    wait_for(lambda: counters(server)["cache.bytes"] <= 40 * MiB)


def test_a_file_larger_than_the_cache_streams_through_unkept(make_server):
    body = os.urandom(3 * MiB + 1)
    server = uploaded_server(make_server, "huge.bin", body, cache__max_size="1MiB")
    wait_too_large_evicted(server)
    assert cache_files(server) == {}
    with server.client() as client:
        for _ in range(2):
            r = client.get("/files/huge.bin")
            assert r.status_code == 200 and r.content == body
        r = client.get("/files/huge.bin", headers={"range": "bytes=2000000-2000009"})
        assert r.status_code == 206 and r.content == body[2000000:2000010]
    assert cache_files(server) == {} and tmp_files(server) == []
    wait_for(lambda: counters(server)["cache.passthrough"] == 3)
    assert counters(server)["cache.fills"] == 0


def test_a_corrupt_file_larger_than_the_cache_never_ends_cleanly(make_server):
    body = os.urandom(2 * MiB)
    server = uploaded_server(make_server, "bad-huge.bin", body, cache__max_size="1MiB")
    flipped = bytearray(body)
    flipped[-1] ^= 1
    (server.settings.data_dir / "remote" / "bad-huge.bin").write_bytes(bytes(flipped))
    wait_too_large_evicted(server)  # its cached (good) bytes went
    with server.client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/files/bad-huge.bin")
    wait_for(lambda: counters(server)["cache.integrity_failures"] == 1)


def test_ranges_near_and_far_from_a_running_fill(make_server, moto, bucket):
    proxy = FaultProxy(moto.port, rate=4 * MiB)  # 40 MiB take about ten seconds
    try:
        body = os.urandom(40 * MiB)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url,
                     "cache__fill_timeout": "30s"}
        server = uploaded_server(make_server, "video.bin", body, **overrides)
        cached = evict(server, "video.bin")
        before = proxy.connections
        with server.client() as client, client.stream("GET", "/files/video.bin") as whole:
            chunks = whole.iter_raw()
            head = next(chunks)  # the fill is running
            # Near: the first MiB is (or soon is) in the fill's file; no other remote GET.
            near = client.get("/files/video.bin", headers={"range": "bytes=1000-2000"})
            assert near.status_code == 206 and near.content == body[1000:2001]
            assert proxy.connections - before == 1
            # Far: 30 MiB ahead of a fill at a few MiB: a ranged GET of its own, answered
            # while the fill is still far from done.
            far = client.get("/files/video.bin", headers={"range": "bytes=35000000-35000099"})
            assert far.status_code == 206 and far.content == body[35000000:35000100]
            assert proxy.connections - before == 2
            assert not cached.exists()
            assert head + b"".join(chunks) == body
        wait_for(cached.exists, timeout=30)
        assert cached.read_bytes() == body
    finally:
        proxy.close()


def test_restart_repairs_the_cache_area(make_server, tmp_path):
    data_dir = tmp_path / "data"
    server = make_server(data_dir, upload__delay="0s")
    bodies = {"keep.bin": os.urandom(300_000), "torn.bin": os.urandom(200_000),
              "gone.bin": os.urandom(100_000)}
    put_all(server, bodies)
    wait_for(lambda: len(index_rows(server)) == 3)
    server.stop()
    cache, tmp = data_dir / "cache", data_dir / "tmp"
    (tmp / "fill-0123456789abcdef").write_bytes(b"half a download")  # a partial entry
    (tmp / "fill-0123456789abcdef.lock").touch()
    (cache / "stray").mkdir()
    (cache / "stray" / "x.bin").write_bytes(b"nobody's")  # unknown to the index
    os.truncate(cache / "torn.bin", 1000)  # the wrong size
    (cache / "gone.bin").unlink()  # an index row without its file
    server = make_server(data_dir, upload__delay="0s")
    # The repair runs in the background: rows first, then the walk of the cache area.
    wait_for(lambda: index_rows(server) == {"keep.bin": 300_000}
             and cache_files(server) == {"keep.bin": 300_000})
    assert tmp_files(server) == [] and not (cache / "stray").exists()
    with server.client() as client:  # the dropped entries read through again, whole
        for path, body in bodies.items():
            assert client.get(f"/files/{path}").content == body
    wait_for(lambda: len(index_rows(server)) == 3)


def test_restart_adopts_uploaded_bytes_the_index_missed(make_server, tmp_path):
    """A data directory from before the index, or a crash between the move to the cache area
    and its index row: the bytes of an uploaded file are kept, and indexed."""
    data_dir = tmp_path / "data"
    server = make_server(data_dir, upload__delay="0s")
    put_all(server, {"old.bin": b"o" * 5000})
    wait_for(lambda: index_rows(server))
    server.stop()
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3")) as conn, conn:
        conn.execute("DELETE FROM cache_entries")
    server = make_server(data_dir, upload__delay="0s")
    wait_for(lambda: index_rows(server) == {"old.bin": 5000})
    with server.client() as client:
        assert client.get("/files/old.bin").content == b"o" * 5000


def test_two_servers_on_one_data_dir_fill_an_entry_once(make_server, moto, bucket, tmp_path):
    """Each server keeps its own single-flight table; the fill lock makes the second one
    follow the first one's download instead of starting its own."""
    proxy = FaultProxy(moto.port, rate=8 * MiB)  # 16 MiB take about two seconds
    try:
        body = os.urandom(16 * MiB)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        one = uploaded_server(make_server, "both.bin", body, **overrides)
        two = make_server(tmp_path / "data", **overrides)
        cached = evict(one, "both.bin")
        before = proxy.connections
        with one.client() as c1, two.client() as c2, \
                c1.stream("GET", "/files/both.bin") as r1:
            chunks = r1.iter_raw()
            first = next(chunks)
            # The first server is filling; the second follows its file as it grows.
            with c2.stream("GET", "/files/both.bin") as r2:
                assert b"".join(r2.iter_raw()) == body
            assert first + b"".join(chunks) == body
        assert proxy.connections - before == 1
        wait_for(cached.exists)
        wait_for(lambda: counters(one)["cache.fills"] == 1)
    finally:
        proxy.close()


def test_a_failed_fill_elsewhere_fails_its_followers_mid_body(make_server, moto, bucket,
                                                              tmp_path):
    proxy = FaultProxy(moto.port, rate=4 * MiB)
    try:
        body = os.urandom(12 * MiB)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        one = uploaded_server(make_server, "cut.bin", body, **overrides)
        two = make_server(tmp_path / "data", **overrides)
        evict(one, "cut.bin")
        with one.client() as c1, two.client() as c2, \
                c1.stream("GET", "/files/cut.bin") as r1:
            next(r1.iter_raw())
            with c2.stream("GET", "/files/cut.bin") as r2:
                assert r2.status_code == 200
                follower = r2.iter_raw()
                next(follower)
                proxy.down()  # the owner's download breaks
                with pytest.raises(httpx.RemoteProtocolError):
                    b"".join(follower)
        proxy.up()
        with two.client() as c2:
            assert c2.get("/files/cut.bin").content == body  # and the next GET tries again
    finally:
        proxy.close()


def test_a_missing_remote_object_is_recorded_on_the_file(make_server):
    server = uploaded_server(make_server, "lost/x.bin", b"x" * 100)
    evict(server, "lost/x.bin")
    (server.settings.data_dir / "remote" / "lost" / "x.bin").unlink()
    with server.client() as client:
        assert client.get("/files/lost/x.bin").status_code == 404
    wait_for(lambda: file_row(server, "lost/x.bin")["last_error"])
    assert "lost/x.bin" in file_row(server, "lost/x.bin")["last_error"]
    wait_for(lambda: counters(server)["cache.fill_errors"] == 1)


def test_stats_count_hits_misses_fills_and_entries(make_server):
    body = os.urandom(500_000)
    server = uploaded_server(make_server, "s.bin", body)
    evict(server, "s.bin")
    with server.client() as client:
        assert client.get("/files/s.bin").content == body  # a miss, filled
        wait_for(lambda: index_rows(server))
        for _ in range(3):
            assert client.get("/files/s.bin").content == body  # hits
        assert client.head("/files/s.bin").status_code == 200  # no bytes: not counted

        def cache_stats() -> dict[str, Any]:
            r = client.get("/admin/api/stats")
            assert r.status_code == 200
            return r.json()["cache"]  # type: ignore[no-any-return]

        wait_for(lambda: cache_stats()["hits"] == 3)
        stats = cache_stats()
        assert stats["misses"] == 1 and stats["fills"] == 1 and stats["hit_ratio"] == 0.75
        assert stats["entries"] == 1 and stats["bytes"] == len(body)
        assert stats["hit_bytes"] == 3 * len(body) and stats["remote_bytes"] == len(body)
        assert stats["max_size"] == server.settings.cache.max_size
        files = client.get("/admin/api/stats").json()["files"]
        assert files["count"] == 1 and files["remote"] == {"count": 1, "bytes": len(body)}
    with server.client(auth=False) as anon:
        assert anon.get("/admin/api/stats").status_code == 401


def test_reads_record_access_times_in_batches(make_server):
    server = make_server(upload__delay="0s")
    put_all(server, {"t.bin": b"t" * 10})
    wait_for(lambda: index_rows(server))
    with contextlib.closing(registry_db(server)) as conn:
        before = conn.execute("SELECT last_access FROM cache_entries").fetchone()[0]
    with server.client() as client:
        client.get("/files/t.bin")

    def later() -> bool:
        with contextlib.closing(registry_db(server)) as conn:
            return bool(conn.execute("SELECT last_access FROM cache_entries").fetchone()[0]
                        > before)

    wait_for(later)


@pytest.mark.parametrize("cache_size", ["1MiB", "10GiB"])  # straight from the cloud; filled
def test_ranges_in_any_order_get_their_own_bytes(make_server, cache_size):
    body = os.urandom(3 * MiB)
    server = uploaded_server(make_server, "order.bin", body, cache__max_size=cache_size)
    if cache_size == "1MiB":
        wait_too_large_evicted(server)
    else:
        wait_for(lambda: index_rows(server))
        evict(server, "order.bin")
    with server.client() as client:
        for spec in ("bytes=2000000-2000009,0-9", "bytes=5-,0-4"):
            r = client.get("/files/order.bin", headers={"range": spec})
            assert r.status_code == 206
            parts = [p for p in r.content.split(b"\r\n\r\n")[1:]]
            first, second = (p.split(b"\r\n--")[0] for p in parts)
            if spec.startswith("bytes=2000000"):
                assert (first, second) == (body[2000000:2000010], body[:10])
            else:
                assert (first, second) == (body[5:], body[:5])


def test_a_missing_object_too_large_to_keep_is_404_not_a_broken_200(make_server):
    server = uploaded_server(make_server, "lost-huge.bin", b"h" * (2 * MiB),
                             cache__max_size="1MiB")
    wait_too_large_evicted(server)
    (server.settings.data_dir / "remote" / "lost-huge.bin").unlink()
    with server.client() as client:
        r = client.get("/files/lost-huge.bin")
        assert r.status_code == 404 and r.json()["error"] == "remote_not_found"
        r = client.get("/files/lost-huge.bin", headers={"range": "bytes=-10"})
        assert r.status_code == 404
    wait_for(lambda: file_row(server, "lost-huge.bin")["last_error"])


def test_restart_removes_names_no_path_can_have(make_server, tmp_path):
    data_dir = tmp_path / "data"
    server = make_server(data_dir, upload__delay="0s")
    put_all(server, {"fine.bin": b"f" * 100})
    wait_for(lambda: index_rows(server))
    server.stop()
    odd = os.path.join(os.fsencode(data_dir / "cache"), b"bad\xff.bin")
    with open(odd, "wb") as f:
        f.write(b"not UTF-8")
    server = make_server(data_dir, upload__delay="0s")
    wait_for(lambda: not os.path.exists(odd))
    with server.client() as client:
        assert client.get("/files/fine.bin").content == b"f" * 100
    assert index_rows(server) == {"fine.bin": 100}


def test_index_slots_stay_dense_so_sampling_is_uniform(tmp_path):
    """Eviction draws random slots; a hole would make the entry after it likelier to go."""
    from filestore.registry import SqliteRegistry

    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    rng = random.Random(3)
    live: set[str] = set()
    for step in range(2000):
        with registry.transaction() as tx:
            if live and rng.random() < 0.45:
                path = rng.choice(sorted(live))
                tx.cache.remove(path)
                live.discard(path)
            else:
                path = f"p/{rng.randrange(500)}"
                tx.cache.add(path, 1, 10, "x", float(step))
                live.add(path)
            slots = sorted(s for (s,) in tx._conn.execute("SELECT slot FROM cache_entries"))
            assert slots == list(range(len(live)))
    with registry.transaction() as tx:
        drawn = [e.path for _ in range(20000) for e in tx.cache.sample(1, rng)]
    counts = [drawn.count(path) for path in live]
    expected = len(drawn) / len(live)
    assert min(counts) > expected / 3 and max(counts) < expected * 3  # no entry favoured
    registry.close()


def test_a_statement_deleting_many_entries_removes_each_and_keeps_the_slots_dense(tmp_path):
    """The triggers fill a freed slot from the outermost one of its side while a statement that
    deletes many entries is still running: every entry it names goes all the same, and the
    slots end dense on both sides. (Rows keep their rowid when their slot changes; a table keyed
    by slot would move rows the statement has yet to reach into slots it has passed, and they
    would survive it.)"""
    from filestore.registry import SqliteRegistry

    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()

    def rows() -> dict[str, int]:
        with registry.transaction() as tx:
            return dict(tx._conn.execute("SELECT path, slot FROM cache_entries").fetchall())

    def counted() -> tuple[int, ...]:
        read = registry.read.counters
        return tuple(read.get(name) for name in ("cache.entries", "cache.bytes",
                                                 "cache.pinned.entries", "cache.pinned.bytes"))

    with registry.transaction() as tx:
        tx.pins.set_limit(10**9)
        tx.pins.add("pin/", 0.0)
        for i in range(60):
            tx.cache.add(f"{'pin' if i % 5 == 0 else 'p'}/{i:02}", 1, 10 + i, "x", float(i))
    names = set(rows())
    with registry.transaction() as tx:  # entries on both sides, in slots all over
        gone = {path for path in names if int(path[-2:]) % 3 == 0}
        deleted = tx._conn.execute(
            "DELETE FROM cache_entries WHERE CAST(substr(path, -2) AS INTEGER) % 3 = 0").rowcount
    left = rows()
    assert deleted == len(gone) and set(left) == names - gone
    free = sorted(s for s in left.values() if s >= 0)
    pinned = sorted(s for s in left.values() if s < 0)
    assert free == list(range(len(free))) and pinned == list(range(-len(pinned), 0))
    sizes = {path: 10 + int(path[-2:]) for path in left}
    assert counted() == (len(left), sum(sizes.values()), len(pinned),
                         sum(sizes[p] for p, s in left.items() if s < 0))
    with registry.transaction() as tx:
        assert tx._conn.execute("DELETE FROM cache_entries").rowcount == len(left)
    assert rows() == {} and counted() == (0, 0, 0, 0)
    registry.close()
