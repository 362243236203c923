"""The crash loop: a real `filestore serve`, killed with SIGKILL thirty times at random moments
while drivers PUT, re-PUT, DELETE and GET files of 0 B to 20 MiB and the queue uploads them to
moto, and restarted each time. Afterwards every acknowledged PUT reads back with its SHA-256
(locally and through the cloud), every acknowledged DELETE stays deleted (locally and in the
bucket), nothing is left in tmp/ or open on the store, and `filestore verify --remote` agrees.

A request the kill cut is "unknown": either outcome is fine, a torn file never is. test_crash.py
kills three times at chosen moments (during uploads); this one kills at random ones: inside and
between requests, during uploads (multipart ones too), and just after a start, while the
background repair and the clean-up of unfinished uploads may still run.

Reproduce a run with `FILESTORE_CRASH_SEED=<seed>` (printed at the start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import s3_overrides, wait_for
from faults import FaultProxy

MiB = 1024 * 1024
SEED = int(os.environ.get("FILESTORE_CRASH_SEED", "20240611"))
KILLS = 30
PATHS = 32
GONE = None  # the state of a path that holds no file


def counters(data_dir: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3", timeout=10)) as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def queue_leases(data_dir: Path) -> int:
    """Rows leased by a worker right now (an upload or remote delete in flight)."""
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3", timeout=10)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM queue WHERE leased_until > ?",
                                (time.time(),)).fetchone()[0])


def counted_as_stored(data_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The counters, and the same figures counted from the tables: they change in the same
    transactions as the rows, so no kill may set them apart."""
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3", timeout=10)) as conn:
        conn.execute("BEGIN")  # one snapshot for all the reads below
        c = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        counted = {"files": "SELECT COUNT(*) FROM files",
                   "bytes": "SELECT TOTAL(size) FROM files",
                   "files.local": "SELECT COUNT(*) FROM files WHERE location = 'local'",
                   "files.remote": "SELECT COUNT(*) FROM files WHERE location = 'remote'",
                   "cache.entries": "SELECT COUNT(*) FROM cache_entries",
                   "cache.bytes": "SELECT TOTAL(size) FROM cache_entries",
                   **{f"queue.{op}.{state}": f"SELECT COUNT(*) FROM queue WHERE op = '{op}' "
                      f"AND state = '{state}'" for op in ("upload", "delete")
                      for state in ("pending", "failed")}}
        tables = {name: int(conn.execute(query).fetchone()[0]) for name, query in counted.items()}
    return {name: c[name] for name in counted}, tables


def size_for(rng: random.Random) -> int:
    """Mostly small files, some of a few hundred KiB, a few multipart ones up to 20 MiB."""
    roll = rng.random()
    if roll < 0.08:
        return 0
    if roll < 0.70:
        return rng.randint(1, 64 * 1024)
    if roll < 0.95:
        return rng.randint(64 * 1024, 1 * MiB)
    return rng.randint(5 * MiB + 1, 20 * MiB)  # above remote.multipart_threshold


def body_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass(frozen=True)
class Op:
    kind: str  # "put" | "delete" | "get"
    path: str
    size: int = 0
    seed: int = 0


class Model:
    """What each path may hold: the SHA-256 of each body it may have, or GONE. An acknowledged
    request leaves one possibility; one the kill cut adds its outcome to the old ones."""

    def __init__(self, paths: list[str]) -> None:
        self.states: dict[str, set[str | None]] = {path: {GONE} for path in paths}
        self.acknowledged = {"put": 0, "delete": 0, "unknown": 0}
        self._lock = threading.Lock()

    def settle(self, path: str, outcome: str | None, kind: str) -> None:
        with self._lock:
            self.states[path] = {outcome}
            self.acknowledged[kind] += 1

    def maybe(self, path: str, outcome: str | None) -> None:
        with self._lock:
            self.states[path].add(outcome)
            self.acknowledged["unknown"] += 1

    def seen(self, path: str, outcome: str | None) -> None:
        """A read answered: it must be one of the possibilities, and is the only one now."""
        with self._lock:
            assert outcome in self.states[path], (path, outcome, self.states[path])
            self.states[path] = {outcome}


class Driver(threading.Thread):
    """Runs its operations against one server life until they end or the server dies."""

    def __init__(self, url: str, token: str, ops: list[Op], model: Model) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, timeout=60,
                                   headers={"authorization": f"Bearer {token}"})
        self.ops = ops
        self.model = model
        self.started = 0  # requests sent (the last one may be in flight)
        self.done = 0  # requests answered
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.client:
                for op in self.ops:
                    self.started += 1
                    try:
                        self._do(op)
                    except httpx.TransportError:
                        return  # killed: this request's outcome is unknown, and the last
                    self.done += 1
        except BaseException as exc:  # an answer no request may get: the test fails with it
            self.error = exc

    def _do(self, op: Op) -> None:
        model, url = self.model, f"/files/{op.path}"
        if op.kind == "put":
            body = body_of(op.seed, op.size)
            digest = hashlib.sha256(body).hexdigest()
            try:
                r = self.client.put(url, content=body)
            except httpx.ConnectError:
                raise  # never reached the server: nothing happened
            except httpx.TransportError:
                model.maybe(op.path, digest)
                raise
            assert r.status_code in (200, 201), (op, r.status_code, r.text)
            assert r.json()["sha256"] == digest
            model.settle(op.path, digest, "put")
        elif op.kind == "delete":
            try:
                r = self.client.delete(url)
            except httpx.ConnectError:
                raise
            except httpx.TransportError:
                model.maybe(op.path, GONE)
                raise
            assert r.status_code in (204, 404), (op, r.status_code, r.text)
            if r.status_code == 404:
                model.seen(op.path, GONE)
            model.settle(op.path, GONE, "delete")
        else:
            r = self.client.get(url)
            assert r.status_code in (200, 404), (op, r.status_code, r.text)
            if r.status_code == 200:
                digest = hashlib.sha256(r.content).hexdigest()
                # The server's ETag is the recorded SHA-256: the bytes must be that file.
                assert r.headers["etag"] == f'"{digest}"', (op, "torn or mixed bytes")
                model.seen(op.path, digest)
            else:
                model.seen(op.path, GONE)


def plan(rng: random.Random, paths: list[str], count: int) -> list[Op]:
    ops = []
    for _ in range(count):
        path = rng.choice(paths)
        roll = rng.random()
        if roll < 0.60:
            ops.append(Op("put", path, size_for(rng), rng.getrandbits(32)))
        elif roll < 0.80:
            ops.append(Op("delete", path))
        else:
            ops.append(Op("get", path))
    return ops


def poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Like wait_for, for a moment the test would like but need not get."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.slow
@pytest.mark.timeout(300)  # about a minute; more on a loaded machine
def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path, moto, bucket,
                                                           serve_process):
    print(f"crash loop seed: {SEED} (FILESTORE_CRASH_SEED={SEED} to run it again)")
    began = time.monotonic()
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    overrides = {**s3_overrides(moto, bucket), "upload__delay": "0.2s",
                 "upload__concurrency": "3", "upload__retry_base": "0.05s",
                 "upload__retry_max": "0.5s", "upload__max_attempts": "1000",
                 "remote__multipart_threshold": "5MiB", "remote__part_size": "5MiB",
                 "cache__min_free": "0"}
    paths = [f"crash/{i:02d}.bin" for i in range(PATHS)]
    # Two drivers at once, each with its own paths: requests overlap, a path's do not.
    halves = [paths[0::2], paths[1::2]]
    model = Model(paths)
    kills_in_flight = kills_mid_multipart = 0
    s3 = moto.client()
    for _ in range(KILLS):
        server = serve_process(data_dir, **overrides).start()
        drivers = [Driver(server.url, server.token, plan(rng, half, rng.randint(1, 8)), model)
                   for half in halves]
        # The moment: once some requests went out (the drivers go on meanwhile, so a request
        # is often cut), or once an upload is in flight (a multipart one, when this life PUTs
        # a large file), and a little later still.
        target = rng.randint(0, sum(len(d.ops) for d in drivers))
        jitter = rng.uniform(0, 0.05)
        roll = rng.random()
        large = [(d, i) for d in drivers for i, op in enumerate(d.ops)
                 if op.kind == "put" and op.size > 5 * MiB]
        for driver in drivers:
            driver.start()
        if large and roll < 0.7:
            driver, index = large[0]
            wait_for(lambda: driver.done > index or driver.error, timeout=60)  # noqa: B023
            poll(lambda: "Uploads" in s3.list_multipart_uploads(Bucket=bucket), timeout=3)
        else:
            wait_for(lambda: sum(d.started for d in drivers) >= target  # noqa: B023
                     or any(d.error for d in drivers), timeout=60)  # noqa: B023
            if roll < 0.4:
                poll(lambda: queue_leases(data_dir) > 0, timeout=1.5)
        time.sleep(jitter)  # the random moment itself, not a wait for anything
        kills_in_flight += queue_leases(data_dir) > 0
        kills_mid_multipart += "Uploads" in s3.list_multipart_uploads(Bucket=bucket)
        server.kill()
        for driver in drivers:
            driver.join(timeout=30)
            assert not driver.is_alive()
            if driver.error is not None:
                raise driver.error
    print(f"{KILLS} kills in {time.monotonic() - began:.0f}s; acknowledged: "
          f"{model.acknowledged}; kills with uploads in flight: {kills_in_flight}, "
          f"mid-multipart: {kills_mid_multipart}")

    # The last life: let the queue drain, then look at everything.
    server = serve_process(data_dir, **overrides).start()

    def drained() -> bool:
        c = counters(data_dir)
        if c["queue.upload.failed"] or c["queue.delete.failed"]:
            return True  # given up: said below
        return (c["queue.upload.pending"] == c["queue.delete.pending"] == 0
                and c["files.local"] == 0)

    wait_for(drained, timeout=90)
    print(f"drained after {time.monotonic() - began:.0f}s")
    c = counters(data_dir)
    recorded, counted = counted_as_stored(data_dir)
    assert recorded == counted
    assert c["queue.upload.failed"] == c["queue.delete.failed"] == 0
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0] == 0  # so no leases

    present: dict[str, str] = {}
    with server.client() as client:
        for i, path in enumerate(paths):
            possible = model.states[path]
            if i % 2 and GONE not in possible:
                # The cached copy goes: this read comes from the cloud, through a fill.
                r = client.post(f"/admin/api/files/{path}/evict")
                assert r.status_code == 200, r.text
            r = client.get(f"/files/{path}")
            assert r.status_code in (200, 404), (path, r.status_code, r.text)
            outcome = hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else GONE
            assert outcome in possible, (path, outcome, possible)
            if outcome is not GONE:
                present[path] = outcome
    assert c["files"] == c["files.remote"] == len(present)

    # The bucket holds exactly the files there are, each with its bytes; nothing left open.
    objects = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="fs/") for o in page.get("Contents", [])}
    assert set(objects) == {f"fs/{path}" for path in present}
    for path, digest in present.items():
        stored = s3.get_object(Bucket=bucket, Key=f"fs/{path}")["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == digest, path
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None

    # No temp files, partial fills or their locks once the reads are done.
    tmp = data_dir / "tmp"
    wait_for(lambda: list(tmp.iterdir()) == [])
    code, output = server.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in output, output
    assert list(tmp.iterdir()) == []

    env = {k: v for k, v in os.environ.items() if k != "FILESTORE_CONFIG"}
    env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
    env.update({"FILESTORE_STORAGE__DATA_DIR": str(data_dir), "FILESTORE_STORAGE__MIN_FREE": "0"})
    verify = subprocess.run([sys.executable, "-m", "filestore", "verify", "--remote"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "all good" in verify.stdout


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_delete_after_a_kill_that_lost_an_uploads_record_removes_the_remote_copy(
        tmp_path, moto, bucket, serve_process):
    proxy = FaultProxy(moto.port, http=True)
    try:
        data_dir = tmp_path / "data"
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url,
                     "upload__delay": "0s"}
        held = proxy.stall_after(-1, method="PUT", path="fs/held.bin")  # stored, not answered
        server = serve_process(data_dir, **overrides).start()
        with server.client() as client:
            assert client.put("/files/held.bin", content=b"in the bucket").status_code == 201
        wait_for(lambda: held.hits == 1)
        s3 = moto.client()
        # The store has the object (the proxy holds back only its answer) before the kill.
        wait_for(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="fs/held.bin").get("KeyCount"))
        server.kill()
        proxy.clear()
        assert s3.get_object(Bucket=bucket, Key="fs/held.bin")["Body"].read() == b"in the bucket"
        # Back with uploads paused (by the admin page, say): the DELETE comes before the upload.
        server = serve_process(data_dir, **overrides, upload__enabled="false").start()
        with server.client() as client:
            assert client.delete("/files/held.bin").status_code == 204
        server.stop()
        env = {k: v for k, v in os.environ.items() if k != "FILESTORE_CONFIG"}
        env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
        env["FILESTORE_STORAGE__DATA_DIR"] = str(data_dir)
        server = serve_process(data_dir, **overrides).start()  # uploads (and deletes) resume
        wait_for(lambda: counters(data_dir)["queue.delete.pending"] == 0)
        server.stop()
        verify = subprocess.run([sys.executable, "-m", "filestore", "verify", "--remote"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        proxy.close()
