"""Two server processes on one data directory (`filestore serve` with 2 workers) under parallel
PUT/GET/DELETE from threads, uploading at once to the embedded remote: no 5xx, no "database is
locked" reaching a client or the log, no version uploaded twice, one winner for concurrent
create-only PUTs, and afterwards counters equal to a recount and a registry that describes the
bytes on disk and in the remote.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for

PATHS = [f"k{i}" for i in range(12)]  # flat: the remote's objects all sit in one directory
THREADS = 6
LOAD_SECONDS = 6.0


# --------------------------------------------------------------------------------------------
# The registry recounted from its tables, and compared with the bytes on disk
# --------------------------------------------------------------------------------------------

def recount(conn: sqlite3.Connection) -> dict[str, int]:
    """What every maintained counter must say, counted from the tables themselves."""
    def one(sql: str, *args: Any) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    found = {"files": one("SELECT COUNT(*) FROM files"),
             "bytes": one("SELECT COALESCE(SUM(size), 0) FROM files")}
    for location in ("local", "remote"):
        found[f"files.{location}"] = one("SELECT COUNT(*) FROM files WHERE location = ?",
                                         location)
        found[f"bytes.{location}"] = one(
            "SELECT COALESCE(SUM(size), 0) FROM files WHERE location = ?", location)
    for op in ("upload", "delete"):
        for state in ("pending", "failed"):
            found[f"queue.{op}.{state}"] = one(
                "SELECT COUNT(*) FROM queue WHERE op = ? AND state = ?", op, state)
    found["cache.entries"] = one("SELECT COUNT(*) FROM cache_entries")
    found["cache.bytes"] = one("SELECT COALESCE(SUM(size), 0) FROM cache_entries")
    return found


def read_counters(data_dir: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3", timeout=30)) as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def _tree(root: Path) -> dict[str, int]:
    """Regular files below `root` (relative path -> size)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def assert_consistent(data_dir: Path, *, keep_local: bool = False,
                      settle: float = 10.0) -> None:
    """`check_consistent`, once the last steps have settled: an upload is recorded before its
    bytes move into the cache area, in a transaction of its own (a rename, then the index row's
    commit), so a directory that looks quiet may still be a moment from consistent."""
    def consistent() -> bool:
        try:
            check_consistent(data_dir, keep_local=keep_local)
        except AssertionError:
            return False
        return True

    with contextlib.suppress(AssertionError):
        wait_for(consistent, timeout=settle)
    check_consistent(data_dir, keep_local=keep_local)  # fails with the details


def check_consistent(data_dir: Path, *, keep_local: bool = False) -> None:
    """Counters equal a recount; files/ holds exactly the bytes of local files (and of uploaded
    ones in backup mode), cache/ exactly the indexed entries, at their recorded sizes; no
    unfinished change is left. Call when the directory is quiet."""
    with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3", timeout=30)) as conn:
        conn.execute("BEGIN")  # one snapshot for all the reads
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        expected = recount(conn)
        rows = conn.execute("SELECT path, size, location FROM files").fetchall()
        entries = dict(conn.execute("SELECT path, size FROM cache_entries").fetchall())
        intents = conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0]
    assert {name: counters.get(name) for name in expected} == expected
    local = {path: size for path, size, location in rows
             if location == "local" or keep_local}
    assert _tree(data_dir / "files") == local
    assert _tree(data_dir / "cache") == entries
    sizes = {path: size for path, size, _ in rows}
    assert all(sizes.get(path) == size for path, size in entries.items()), entries
    assert intents == 0
    assert not any((data_dir / "tmp").iterdir())


# --------------------------------------------------------------------------------------------
# Counting the remote's writes as they happen (inotify: every upload renames into place)
# --------------------------------------------------------------------------------------------

class RenameWatch:
    """Counts the files renamed into one directory, by name (Linux inotify, IN_MOVED_TO)."""

    _IN_MOVED_TO = 0x80
    _IN_NONBLOCK = os.O_NONBLOCK
    _HEADER = struct.Struct("iIII")

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self._IN_NONBLOCK)
        if self.fd < 0:
            pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self.fd, str(directory).encode(), self._IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.counts: Counter[str] = Counter()

    def collect(self) -> Counter[str]:
        """Read every event queued so far; the counts since the watch began."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.counts
            pos = 0
            while pos < len(data):
                _, mask, _, length = self._HEADER.unpack_from(data, pos)
                name = data[pos + 16: pos + 16 + length].rstrip(b"\0").decode()
                pos += 16 + length
                assert mask & 0x4000 == 0, "inotify queue overflowed"  # IN_Q_OVERFLOW
                self.counts[name] += 1

    def close(self) -> None:
        os.close(self.fd)


# --------------------------------------------------------------------------------------------
# The worker processes of `filestore serve --workers 2`
# --------------------------------------------------------------------------------------------

def worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes: the children of the supervisor that run the app."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return sorted(found)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


# --------------------------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------------------------

class Load:
    """What the clients sent and saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: dict[str, set[str]] = {path: set() for path in PATHS}  # sha256s PUT
        self.acknowledged: Counter[str] = Counter()  # 200/201 PUTs per path
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.problems: list[str] = []

    def note(self, op: str, path: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[(op, response.status_code)] += 1
            if response.status_code >= 500 or b"locked" in response.content:
                self.problems.append(f"{op} {path}: {response.status_code} {response.text[:200]}")


def _client(url: str, token: str) -> httpx.Client:
    # A new connection per request, so the kernel spreads them over both workers.
    return httpx.Client(base_url=url, timeout=30, headers={
        "authorization": f"Bearer {token}", "connection": "close"})


def _run_clients(url: str, token: str, load: Load, seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + LOAD_SECONDS
    n = 0
    with _client(url, token) as client:
        while time.monotonic() < deadline:
            n += 1
            path = rng.choice(PATHS)
            roll = rng.random()
            if roll < 0.45:
                body = f"{path} {seed} {n} ".encode() + rng.randbytes(rng.choice([0, 10, 70_000]))
                with load.lock:
                    load.bodies[path].add(hashlib.sha256(body).hexdigest())
                r = client.put(f"/files/{path}", content=body)
                load.note("PUT", path, r)
                if r.status_code in (200, 201):
                    with load.lock:
                        load.acknowledged[path] += 1
            elif roll < 0.85:
                r = client.get(f"/files/{path}")
                load.note("GET", path, r)
                if r.status_code == 200:
                    # Whole bytes of a version somebody PUT, never a mix. (That the headers
                    # are that version's too is test_reads_racing_replacements_...)
                    digest = hashlib.sha256(r.content).hexdigest()
                    with load.lock:
                        if digest not in load.bodies[path]:
                            load.problems.append(f"GET {path}: {len(r.content)} bytes "
                                                 f"nobody PUT ({r.content[:30]!r})")
            elif roll < 0.97:
                load.note("DELETE", path, client.delete(f"/files/{path}"))
            else:
                load.note("STATS", "-", client.get("/admin/api/stats"))


def _in_parallel(target: Any, args: list[tuple[Any, ...]]) -> None:
    errors: list[BaseException] = []

    def run(*a: Any) -> None:
        try:
            target(*a)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    if errors:
        raise errors[0]


def _drained(data_dir: Path) -> bool:
    c = read_counters(data_dir)
    return (c["queue.upload.pending"] == 0 and c["queue.delete.pending"] == 0
            and c["files.local"] == 0)


@pytest.fixture
def two_workers(tmp_path: Path, serve_process: Any) -> Iterator[Any]:
    server = serve_process(tmp_path / "data", server__workers="2", upload__delay="0s",
                           cache__min_free="0").start()
    workers = wait_for(lambda: len(worker_pids(server.proc.pid)) == 2
                       and worker_pids(server.proc.pid))
    yield server, workers


@pytest.mark.timeout(120)
def test_two_workers_under_parallel_put_get_delete(two_workers, tmp_path):
    server, workers = two_workers
    data_dir = tmp_path / "data"
    remote = data_dir / "remote"
    watch = RenameWatch(remote)
    try:
        # Create-only PUTs of one path from every thread at once: one winner, across processes.
        barrier = threading.Barrier(THREADS)
        created: list[int] = []

        def create_once(i: int) -> None:
            with _client(server.url, server.token) as client:
                barrier.wait()
                r = client.put("/files/once", content=f"from {i}".encode(),
                               headers={"if-none-match": "*"})
                created.append(r.status_code)

        _in_parallel(create_once, [(i,) for i in range(THREADS)])
        assert sorted(created) == [201] + [412] * (THREADS - 1)

        load = Load()
        ticks = {pid: cpu_ticks(pid) for pid in workers}
        _in_parallel(_run_clients, [(server.url, server.token, load, seed)
                                    for seed in range(THREADS)])
        busy = {pid: cpu_ticks(pid) - ticks[pid] for pid in workers}
        assert not load.problems, load.problems[:10]
        assert load.statuses[("PUT", 201)] + load.statuses[("PUT", 200)] > 50, load.statuses
        assert load.statuses[("GET", 200)] > 20 and load.statuses[("DELETE", 204)] > 5
        # Both processes served: each spent real CPU time (100 ticks a second) on the load.
        assert all(spent > 30 for spent in busy.values()), busy

        wait_for(lambda: _drained(data_dir), timeout=60)
        counts = read_counters(data_dir)
        renames = watch.collect()
        acknowledged = sum(load.acknowledged.values())
        # Every recorded upload really went up, and no version went up twice: a path's
        # uploads are at most its acknowledged PUTs (+1 for "once").
        assert sum(renames.values()) >= counts["uploads.done"]
        assert counts["uploads.done"] <= acknowledged + 1
        for path in PATHS:
            assert renames[path] <= load.acknowledged[path], (path, renames, load.acknowledged)
        assert counts["queue.upload.failed"] == 0 and counts["queue.delete.failed"] == 0

        # The end state agrees everywhere: registry, cache area, remote objects.
        assert_consistent(data_dir)
        with contextlib.closing(sqlite3.connect(data_dir / "registry.sqlite3")) as conn:
            rows = dict(conn.execute("SELECT path, sha256 FROM files").fetchall())
        objects = {name: hashlib.sha256((remote / name).read_bytes()).hexdigest()
                   for name in os.listdir(remote) if (remote / name).is_file()}
        assert objects == rows  # deleted paths' objects went too

        # A calm round: each path written once more, in parallel. Exactly one upload each.
        done_before, renames_before = counts["uploads.done"], Counter(watch.collect())

        def put_once(path: str) -> None:
            with _client(server.url, server.token) as client:
                assert client.put(f"/files/{path}", content=f"final {path}".encode()
                                  ).status_code in (200, 201)

        _in_parallel(put_once, [(path,) for path in PATHS])
        wait_for(lambda: _drained(data_dir), timeout=60)
        # The counter is committed before the bytes move into the cache area; let both land.
        wait_for(lambda: read_counters(data_dir)["cache.entries"] == len(PATHS) + 1)
        assert read_counters(data_dir)["uploads.done"] - done_before == len(PATHS)
        assert watch.collect() - renames_before == Counter(PATHS)
        assert_consistent(data_dir)
    finally:
        watch.close()
    _, out = server.stop()  # ServeProcess reads the output as it comes
    assert "database is locked" not in out and "Traceback" not in out, out[-3000:]


def test_reads_racing_replacements_get_one_whole_version(make_server):
    server = make_server(upload__enabled="false")
    # Mostly 8 bytes, so sizes cannot tell the versions apart; every third one 9.
    bodies = [b"%07d\n" % n if n % 3 else b"%08d\n" % n for n in range(100_000)]
    problems: list[str] = []
    deadline = time.monotonic() + 3.0

    def put(seed: int) -> None:
        with server.client() as client:
            n = seed
            while time.monotonic() < deadline and len(problems) < 10:
                assert client.put("/files/hot", content=bodies[n]).status_code in (200, 201)
                n += 2

    def get(_: int) -> None:
        with server.client() as client:
            while time.monotonic() < deadline and len(problems) < 10:
                r = client.get("/files/hot")
                if r.status_code != 200:
                    problems.append(f"{r.status_code} {r.text[:100]}")
                elif r.headers["etag"] != f'"{hashlib.sha256(r.content).hexdigest()}"':
                    problems.append(f"the bytes {r.content!r} under another version's ETag")

    with server.client() as client:
        client.put("/files/hot", content=bodies[0])
    _in_parallel(lambda i: (put if i < 2 else get)(i), [(i,) for i in range(4)])
    assert not problems, (len(problems), problems[:5])
