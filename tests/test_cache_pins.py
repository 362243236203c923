"""`filestore cache warm|pin|unpin|pins` and their admin API: warming downloads exactly the
cloud-only files under a prefix (once, resumably, shared with GETs), pinned entries survive every
eviction and count toward cache.max_size, a pin that cannot fit is refused with what is missing,
and the pinned figures show in the statistics and the metrics. Against moto's real S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import counters, s3_overrides, uploaded, wait_for
from faults import FaultProxy
from test_accounts import bearer
from test_cache import evict

from filestore.cli import main

pytestmark = pytest.mark.timeout(90)

KiB = 1024
MiB = 1024 * KiB


def cli(data: Path, env: dict[str, str], *args: str) -> Result:
    """A `filestore` command in this process, on the data directory the test's server uses."""
    environ = {"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
               "FILESTORE_CACHE__MIN_FREE": "0", "FILESTORE_CONFIG": "",
               **{f"FILESTORE_{k.upper()}": v for k, v in env.items()}}
    return CliRunner().invoke(main, list(args), env=environ)


def index(data: Path) -> dict[str, bool]:
    """The cache index: path -> pinned."""
    with contextlib.closing(sqlite3.connect(data / "registry.sqlite3", timeout=10)) as conn:
        return {path: bool(pinned) for path, pinned in
                conn.execute("SELECT path, slot < 0 FROM cache_entries").fetchall()}


def fill_files(data: Path) -> list[str]:
    return [p.name for p in (data / "tmp").iterdir() if p.name.startswith("fill-")]


def put_uploaded(server: Any, bodies: dict[str, bytes]) -> None:
    """PUT each body and wait until it is uploaded and its bytes are in the cache's index."""
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    data = server.settings.data_dir
    wait_for(lambda: all(uploaded(server, p) for p in bodies) and set(bodies) <= set(index(data)))


def setup(make_server: Any, moto: Any, bucket: str, tmp_path: Path,
          **more: str) -> tuple[Any, Path, dict[str, str]]:
    env = {**s3_overrides(moto, bucket), "upload__delay": "0s", **more}
    data = tmp_path / "data"
    return make_server(data, **env), data, env


def test_warm_downloads_exactly_the_cloud_only_files_under_the_prefix(make_server, moto, bucket,
                                                                      tmp_path):
    server, data, env = setup(make_server, moto, bucket, tmp_path, upload__delay="1h")
    bodies = {p: os.urandom(50 * KiB + i) for i, p in enumerate(
        ["w/a.bin", "w/b/c.bin", "w/kept.bin", "w/local.bin", "wx/no.bin", "other/o.bin"])}
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        for path in bodies:
            if path != "w/local.bin":  # the one that stays local (cooling down)
                assert client.post(f"/admin/api/files/{path}/upload").status_code == 200
    uploaded_ones = [p for p in bodies if p != "w/local.bin"]
    wait_for(lambda: set(uploaded_ones) <= set(index(data)))
    for path in ("w/a.bin", "w/b/c.bin", "wx/no.bin", "other/o.bin"):
        evict(server, path)
    before = counters(server)

    warmed = cli(data, env, "cache", "warm", "w/", "--json")
    assert warmed.exit_code == 0, warmed.output
    report = json.loads(warmed.stdout)
    assert (report["files"], report["warmed"], report["failed"]) == (2, 2, 0)
    assert report["warmed_bytes"] == len(bodies["w/a.bin"]) + len(bodies["w/b/c.bin"])
    assert set(index(data)) == {"w/a.bin", "w/b/c.bin", "w/kept.bin"}  # wx/ is not under w/
    after = counters(server)
    assert after["cache.remote_bytes"] - before["cache.remote_bytes"] == report["warmed_bytes"]
    assert after["cache.fills"] - before["cache.fills"] == 2
    assert after["cache.misses"] == before["cache.misses"]  # a warm is no client's miss
    assert not any(index(data).values())  # nothing under w/ is pinned
    assert fill_files(data) == []

    again = cli(data, env, "cache", "warm", "w/")
    assert again.exit_code == 0, again.output
    assert "0 files warmed" in again.stdout
    assert counters(server)["cache.remote_bytes"] == after["cache.remote_bytes"]
    with server.client() as client:  # hits now, served from the cache
        assert client.get("/files/w/b/c.bin").content == bodies["w/b/c.bin"]
    assert counters(server)["cache.remote_bytes"] == after["cache.remote_bytes"]
    bad = cli(data, env, "cache", "warm", "../up")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_a_file_the_cloud_lost_fails_alone_and_is_named(make_server, moto, bucket, tmp_path):
    server, data, env = setup(make_server, moto, bucket, tmp_path)
    bodies = {"m/ok.bin": os.urandom(10 * KiB), "m/gone.bin": os.urandom(10 * KiB)}
    put_uploaded(server, bodies)
    for path in bodies:
        evict(server, path)
    moto.client().delete_object(Bucket=bucket, Key="fs/m/gone.bin")
    warmed = cli(data, env, "cache", "warm", "m/")
    assert warmed.exit_code == 1, warmed.output
    assert "1 files warmed" in warmed.stdout and "1 failed" in warmed.stdout
    assert "\n  failed m/gone.bin: " in warmed.stderr and "Traceback" not in warmed.output
    assert set(index(data)) == {"m/ok.bin"} and fill_files(data) == []


def test_an_interrupted_warm_leaves_what_is_done_and_a_rerun_takes_the_rest(
        make_server, moto, bucket, tmp_path):
    server, data, env = setup(make_server, moto, bucket, tmp_path)
    bodies = {f"r/{i}.bin": os.urandom(128 * KiB) for i in range(8)}
    put_uploaded(server, bodies)
    for path in bodies:
        evict(server, path)
    server.stop()  # the command runs alone on the data directory
    environ = {k: v for k, v in os.environ.items() if k != "FILESTORE_CONFIG"}
    environ.update({"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
                    "FILESTORE_CACHE__MIN_FREE": "0",
                    # 256 KiB/s: half a second a file, so the interrupt lands midway.
                    "FILESTORE_CACHE__DOWNLOAD_BANDWIDTH": "256KiB",
                    **{f"FILESTORE_{k.upper()}": v for k, v in env.items()}})
    proc = subprocess.Popen([sys.executable, "-m", "filestore", "cache", "warm", "r/",
                             "--concurrency", "1"], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(index(data)) >= 2 or proc.poll() is not None, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "run it again" in stderr and "Traceback" not in stderr
    done = set(index(data))
    assert 2 <= len(done) < len(bodies)
    assert fill_files(data) == []  # the download it stopped left nothing behind
    rest = cli(data, env, "cache", "warm", "r/", "--json")
    assert rest.exit_code == 0, rest.output
    report = json.loads(rest.stdout)
    assert report["files"] == report["warmed"] == len(bodies) - len(done)
    assert set(index(data)) == set(bodies)


def test_pinned_entries_survive_eviction_and_count_toward_max_size(make_server, moto, bucket,
                                                                    tmp_path):
    # sample = 64 draws every evictable entry, so the GC evicts in exact LRU order.
    server, data, env = setup(make_server, moto, bucket, tmp_path, cache__max_size="1000KiB",
                              cache__sample="64")
    pinned = {f"p/{i}.bin": os.urandom(100 * KiB) for i in range(3)}
    others = {f"o/{i}.bin": os.urandom(100 * KiB) for i in range(4)}
    put_uploaded(server, {**pinned, **others})
    pin = cli(data, env, "cache", "pin", "p/", "--json")
    assert pin.exit_code == 0, pin.output
    answer = json.loads(pin.stdout)
    assert answer["pin"] == {"prefix": "p/", "new": True, "files": 3, "bytes": 300 * KiB,
                             "marked": 3}
    assert answer["warm"]["files"] == 0  # all cached already
    assert {p for p, is_pinned in index(data).items() if is_pinned} == set(pinned)

    # 700 KiB more: over the budget, and everything unpinned goes (oldest first).
    big = os.urandom(700 * KiB)
    put_uploaded(server, {"big.bin": big})
    wait_for(lambda: set(index(data)) == {*pinned, "big.bin"})
    assert counters(server)["cache.bytes"] == 1000 * KiB

    # Pinning big.bin too fills cache.max_size with pinned bytes exactly.
    assert cli(data, env, "cache", "pin", "big.bin").exit_code == 0
    assert all(index(data).values())
    gc = cli(data, env, "gc")
    assert gc.exit_code == 0 and "nothing to evict" in gc.output, gc.output
    # No room is left: a read streams through, kept nowhere, evicting nothing.
    with server.client() as client:
        assert client.get("/files/o/1.bin").content == others["o/1.bin"]
    assert set(index(data)) == {*pinned, "big.bin"}
    warm = cli(data, env, "cache", "warm", "o/", "--json")
    assert warm.exit_code == 1
    report = json.loads(warm.stdout)
    assert report["warmed"] == 0 and report["skipped"] == 4
    assert "full of pinned bytes" in report["stopped"]
    assert set(index(data)) == {*pinned, "big.bin"}

    # A pin that cannot fit: refused in one line, with what is missing.
    refused = cli(data, env, "cache", "pin", "o/")
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("filestore: error: ")
    assert "over cache.max_size (1,000.0 KiB) by 400.0 KiB" in refused.stderr, refused.stderr
    with server.client() as client:
        r = client.post("/admin/api/cache/pins", json={"prefix": "o/"})
    assert r.status_code == 409 and r.json()["error"] == "pin_does_not_fit"
    assert r.json()["missing"] == 400 * KiB and r.json()["needed"] == 1400 * KiB

    # Unpinned, p/ is ordinary again: the next upload over the budget evicts it.
    unpin = cli(data, env, "cache", "unpin", "p/", "--json")
    assert unpin.exit_code == 0 and json.loads(unpin.stdout)["released"] == 3
    put_uploaded(server, {"n.bin": os.urandom(300 * KiB)})
    wait_for(lambda: set(index(data)) == {"big.bin", "n.bin"})
    assert index(data) == {"big.bin": True, "n.bin": False}
    assert cli(data, env, "cache", "unpin", "p/").exit_code == 1  # not pinned any more


def test_stats_metrics_and_the_pins_listing_show_the_pinned_figures(make_server, moto, bucket,
                                                                    tmp_path):
    server, data, env = setup(make_server, moto, bucket, tmp_path)
    bodies = {f"s/{i}.bin": os.urandom(10 * KiB) for i in range(3)}
    put_uploaded(server, {**bodies, "t.bin": b"t" * 1000})
    assert cli(data, env, "cache", "pin", "s/").exit_code == 0
    with server.client() as client:
        cache = client.get("/admin/api/stats").json()["cache"]
        metrics = client.get("/metrics").text
    assert (cache["pinned_entries"], cache["pinned_bytes"]) == (3, 30 * KiB)
    assert "filestore_cache_pinned_entries 3.0" in metrics
    assert f"filestore_cache_pinned_bytes {30 * KiB}.0" in metrics
    stats = cli(data, env, "stats")
    assert "pinned 3 entries (30.0 KiB)" in stats.stdout, stats.stdout
    listed = cli(data, env, "cache", "pins", "--json")
    assert listed.exit_code == 0, listed.output
    [item] = json.loads(listed.stdout)
    assert (item["prefix"], item["files"], item["bytes"], item["cached_files"],
            item["cached_bytes"]) == ("s/", 3, 30 * KiB, 3, 30 * KiB)
    assert "s/  3 files" in cli(data, env, "cache", "pins").stdout


def test_the_api_pins_warms_and_unpins_and_refuses_an_account_token(make_server, moto, bucket,
                                                                    tmp_path):
    server, data, _ = setup(make_server, moto, bucket, tmp_path)
    bodies = {f"a/{i}.bin": os.urandom(20 * KiB) for i in range(3)}
    others = {f"b/{i}.bin": os.urandom(20 * KiB) for i in range(2)}
    put_uploaded(server, {**bodies, **others})
    for path in [*bodies, *others]:
        evict(server, path)
    with server.client() as client:
        created = client.post("/admin/api/accounts", json={"id": "acme", "name": "Acme"})
        assert created.status_code == 201, created.text
        with httpx.Client(base_url=server.url, timeout=30,
                          headers=bearer(created.json()["token"])) as account:
            for method, url, body in [("GET", "/admin/api/cache/pins", None),
                                      ("POST", "/admin/api/cache/pins", {"prefix": "acme/"}),
                                      ("DELETE", "/admin/api/cache/pins?prefix=a/", None),
                                      ("POST", "/admin/api/cache/warm", {"prefix": "acme/"})]:
                r = account.request(method, url, json=body)
                assert r.status_code == 403 and r.json()["error"] == "forbidden", (url, r.text)

        r = client.post("/admin/api/cache/pins", json={"prefix": "a/"})
        assert r.status_code == 201, r.text
        assert r.json()["warm"] == {"prefix": "a/", "files": 3, "bytes": 60 * KiB,
                                    "room": server.settings.cache.max_size, "fits": True}
        wait_for(lambda: index(data) == dict.fromkeys(bodies, True))  # warmed, pinned
        again = client.post("/admin/api/cache/pins", json={"prefix": "a/", "warm": False})
        assert again.status_code == 200 and again.json()["new"] is False
        [item] = client.get("/admin/api/cache/pins").json()["items"]
        assert (item["prefix"], item["cached_files"]) == ("a/", 3)

        r = client.post("/admin/api/cache/warm", json={"prefix": "b/"})
        assert r.status_code == 202 and r.json()["files"] == 2, r.text
        wait_for(lambda: set(others) <= set(index(data)))
        assert not any(index(data)[p] for p in others)

        # A file written under a pinned prefix later is pinned as it enters the cache.
        assert client.put("/files/a/new.bin", content=b"n" * 100).status_code == 201
        wait_for(lambda: index(data).get("a/new.bin") is True)

        for method, url, body, status in [
                ("POST", "/admin/api/cache/pins", {"prefix": ""}, 400),
                ("POST", "/admin/api/cache/pins", {"prefix": "../x"}, 400),
                ("POST", "/admin/api/cache/pins", {"prefix": "a/", "other": 1}, 400),
                ("POST", "/admin/api/cache/pins", [1], 400),
                ("POST", "/admin/api/cache/warm", {}, 400),
                ("DELETE", "/admin/api/cache/pins", None, 400),
                ("DELETE", "/admin/api/cache/pins?prefix=zz/", None, 404)]:
            r = client.request(method, url, json=body)
            assert r.status_code == status and "error" in r.json(), (url, body, r.text)

        r = client.delete("/admin/api/cache/pins", params={"prefix": "a/"})
        assert r.status_code == 200 and r.json() == {"prefix": "a/", "released": 4}
        assert client.get("/admin/api/cache/pins").json()["items"] == []
    assert not any(index(data).values())
    assert counters(server)["cache.pinned.entries"] == 0
    assert counters(server)["cache.pinned.bytes"] == 0


def test_a_warm_follows_a_gets_download_instead_of_downloading_again(make_server, moto, bucket,
                                                                      tmp_path):
    proxy = FaultProxy(moto.port, rate=2 * MiB)  # 3 MiB take a second and a half
    try:
        server, data, env = setup(make_server, moto, bucket, tmp_path,
                                  remote__endpoint_url=proxy.url)
        body = os.urandom(3 * MiB)
        put_uploaded(server, {"g/one.bin": body})
        evict(server, "g/one.bin")
        before = counters(server)
        with server.client() as client, client.stream("GET", "/files/g/one.bin") as r:
            chunks = r.iter_raw()
            first = next(chunks)  # the server's fill is running
            warmed = cli(data, env, "cache", "warm", "g/", "--json")
            assert first + b"".join(chunks) == body
        assert warmed.exit_code == 0, warmed.output
        assert json.loads(warmed.stdout)["warmed"] == 1
        # One download in all: the warm followed the server's file as it grew (the command
        # wrote its figures before it ended; the server's come within a second).
        wait_for(lambda: counters(server)["cache.remote_bytes"] - before["cache.remote_bytes"]
                 >= len(body))
        after = counters(server)
        assert after["cache.remote_bytes"] - before["cache.remote_bytes"] == len(body)
        assert after["cache.fills"] - before["cache.fills"] == 1
        assert index(data) == {"g/one.bin": False}
    finally:
        proxy.close()


def test_slots_stay_dense_on_both_sides_and_draws_never_reach_a_pinned_entry(tmp_path):
    import random

    import sqlite_utils

    from filestore.registry import SqliteRegistry
    from filestore.registry.migrations.cache_pins import migration_10

    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    # Idempotent: run again (as after a crash before user_version moved), it changes nothing.
    conn = sqlite3.connect(tmp_path / "registry.sqlite3", isolation_level=None)
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    migration_10(sqlite_utils.Database(conn))
    assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    conn.close()
    rng = random.Random(5)
    live: dict[str, int] = {}
    with registry.transaction() as tx:
        tx.pins.set_limit(10**9)
    for step in range(1500):
        with registry.transaction() as tx:
            roll = rng.random()
            if roll < 0.05:
                prefix = f"p/{rng.randrange(10)}"
                tx.pins.add(prefix, 0.0)
                tx.cache.pin_under(prefix, "", 10**6)
            elif roll < 0.1 and tx.pins.all():
                prefix = rng.choice(tx.pins.all()).prefix
                tx.pins.remove(prefix)
                tx.cache.unpin_under(prefix, [p.prefix for p in tx.pins.all()], "", 10**6)
            elif live and roll < 0.45:
                path = rng.choice(sorted(live))
                tx.cache.remove(path)
                del live[path]
            else:
                path = f"p/{rng.randrange(300)}"
                size = rng.randrange(1, 100)
                tx.cache.add(path, 1, size, "x", float(step))
                live.setdefault(path, size)
            rows = tx._conn.execute("SELECT path, size, slot FROM cache_entries").fetchall()
            pins = [p.prefix for p in tx.pins.all()]
            pinned = [(s, slot) for path, s, slot in rows if any(path.startswith(p)
                                                                  for p in pins)]
            ordinary = sorted(slot for path, _, slot in rows if not any(path.startswith(p)
                                                                        for p in pins))
            assert sorted(slot for _, slot in pinned) == list(range(-len(pinned), 0))
            assert ordinary == list(range(len(ordinary)))
            assert tx.counters.get("cache.pinned.entries") == len(pinned)
            assert tx.counters.get("cache.pinned.bytes") == sum(s for s, _ in pinned)
            assert all(not entry.pinned for entry in tx.cache.sample(8, rng))
    with registry.transaction() as tx:  # every entry pinned: nothing to draw
        tx.pins.add("p/", 0.0)
        tx.cache.pin_under("p/", "", 10**6)
        assert tx.cache.sample(64, rng) == []
    registry.close()
