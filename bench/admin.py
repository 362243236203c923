"""Admin page benchmark: what the admin pages cost with 10 files and with 1,000,000.

What is measured
    Two data directories (under /dev/shm when there is one) are built straight in the registry:
    a reference store of --small files (default 10) and a large one of --files files (default
    1,000,000; --quick 100,000). Rows only, no file bytes: the pages read the registry, and the
    files view stats one path per listed file, which finds nothing either way. Each store gets
    the same mix, by position, so even the 10-file store has one of each kind:
    - 60% of the files in the cloud (location 'remote', uploaded), a tenth of those cached
      (`cache_entries` rows, dense slots);
    - 40% local, each with an upload queued: 0.5% failed (last_error set), 10% due now (a
      quarter of those retrying, with attempts and a last error), one in 100,000 in flight
      (leased by a live-looking owner), the rest cooling down (due within the next hour);
    - one remote delete pending per 1,000 files (of paths no longer registered);
    - a finished move job and a running one (leased, so nothing takes it up).
    Rows go in with `executemany`, 100,000 to a transaction, so the registry's own triggers keep
    the counters; the rest (`seq.version`, `uploads.*`, the cache's events) is added as filestore
    adds it. At the end of the set-up every counter is checked against a recount of its table.
    With 1M files, 40,000 uploads are due and 358,000 cooling down: both sides of the queue's
    due/waiting split are past `stats.COUNT_CAP`, its most expensive case.

    Then a real `filestore serve` (one worker, uploads disabled so the queue stays as built, a
    cache budget above what is cached so nothing is evicted) runs on each store, and --requests
    sequential requests (default 200; --quick 50) of each page are timed on one keep-alive
    connection, after --warmup untimed ones (default 5; the very first is reported as "first"):
      GET /admin                      the statistics dashboard (HTML, session cookie)
      GET /admin/api/stats            the same figures as JSON (bearer token)
      GET /admin/files                the files view, first page
      GET /admin/files?prefix=...     the files view under a directory in the middle
      GET /admin/failed               the failed uploads, first page
    Every answer must be a 200 showing the store's own figures (the file count, a path from
    the page). Reported per page: median and p95 for each store, and the ratio large/small of
    the medians. Target: median < 50 ms with 1M files, whatever the store's size ("the page
    costs the same with 10 files or 1 million").

    Server side alone: the same data the pages show, read in this process from each store's
    registry, median and p95 of --requests calls: `stats.figures()` (dashboard and API), a files
    page (`files.listing` + `describe`, at the start and under the middle directory) and a failed
    page (`queue.failed_page`). The difference to the HTTP figures is templating, HTTP and
    authentication.

    This process holds the data directory's live lock (shared, as every process using a data
    directory does), so the server is not the directory's only user and skips start-up crash
    recovery (which would clear the in-flight leases) and the cache repair (which would drop
    cache entries without bytes): start-up work, not the page's.

Why
    The admin issue promises that the statistics come from counters, so the page costs the same
    with 10 files or 1 million. The 10-file store in the same run is the reference: the ratio
    shows whether anything grows with the store, the absolute median checks the 50 ms target.

Usage
    python bench/admin.py [--quick] [--files 1m] [--small 10] [--requests 200] [--warmup 5]
                          [--seed 1] [--json PATH] [--keep]

Stdlib and filestore only; the servers bind 127.0.0.1, each on a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from benchlib import (
    GIB,
    HOST,
    KIB,
    MIB,
    BenchError,
    Process,
    add_output_options,
    apply_profile,
    busy_problems,
    count_text,
    count_value,
    cpu_busy,
    filestore_command,
    filestore_env,
    filestore_settings,
    free_port,
    git_revision,
    log,
    log_problems,
    nproc,
    package_versions,
    print_problems,
    print_rows,
    ratio_text,
    run_main,
    temp_directory,
    verdict,
    versions_text,
    write_json,
)
from serve import LOG_MARKS

from filestore import stats
from filestore.admin.files import describe
from filestore.admin.session import COOKIE
from filestore.admin.views import PAGE_SIZE
from filestore.config import CacheSettings, Settings, StorageSettings
from filestore.datadir import DataDir
from filestore.local import LocalStore
from filestore.registry import SqliteRegistry, Tables

TARGET_MS = 50.0  # median of every page with the large store
PER_DIR = 1000  # files per directory: photos/0000/0000000.jpg ... photos/0999/0999999.jpg
MAX_FILES = 10_000_000  # keeps the zero-padded paths in numeric order
CHUNK = 100_000  # rows per transaction while building
REMOTE = "default"
OWNER = "bench-host:1:0badc0de"  # the lease holder of the in-flight uploads and the running job
DAY = 86_400.0
ERRORS = (
    "remote unavailable: Could not connect to the endpoint URL",
    "S3 error 503 SlowDown: Please reduce your request rate.",
    "upload verification failed: the remote ETag does not match the bytes sent",
)

QUICK = {"files": 100_000, "requests": 50}
FULL = {"files": 1_000_000, "requests": 200}


# -- arguments ------------------------------------------------------------------------------------


def parse_count(text: str) -> int:
    """`10`, `100k`, `1m`, `1,000`: a decimal count (k = 1,000, m = 1,000,000)."""
    count = count_value(text.replace(",", "").replace("_", ""))
    if count is None:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 10, 100k, 1m)")
    return count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/admin.py",
        description="Cost of the admin pages with 10 files vs 1,000,000 registered files.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="100k files in the large store, 50 requests per page")
    parser.add_argument("--files", type=parse_count, default=None,
                        help="files in the large store (default 1m; --quick 100k)")
    parser.add_argument("--small", type=parse_count, default=10,
                        help="files in the reference store (default 10)")
    parser.add_argument("--requests", type=int, default=None,
                        help="timed requests per page and store (default 200; --quick 50)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed requests per page first (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    add_output_options(parser, "data directories, server logs")
    args = parser.parse_args(argv)
    apply_profile(args, QUICK, FULL)
    if not 10 <= args.small <= args.files <= MAX_FILES:
        parser.error(f"need 10 <= --small <= --files <= {MAX_FILES:,}")
    if args.requests < 1 or args.warmup < 1:
        parser.error("--requests and --warmup must be at least 1")
    return args


# -- the stores -----------------------------------------------------------------------------------


def file_path(i: int) -> str:
    return f"photos/{i // PER_DIR:04d}/{i:07d}.jpg"


def is_local(i: int) -> bool:
    return i % 5 in (1, 3)  # 40%


def upload_kind(k: int) -> str:
    """What the upload of the k-th local file is doing; k = 0..3 already covers every kind."""
    if k % 200 == 0:
        return "failed"
    if k % 100_000 == 1:
        return "in flight"
    if k % 20 in (2, 4):
        return "due"  # and retrying when k % 40 == 2
    return "cooling"


@dataclasses.dataclass
class Store:
    """A built data directory and what it holds (expected on the pages)."""

    name: str
    data_dir: Path
    files: int
    seconds: float = 0.0  # to build it
    db_bytes: int = 0
    local: int = 0
    remote: int = 0
    cached: int = 0
    cached_bytes: int = 0
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)  # upload_kind -> count
    retrying: int = 0
    deletes: int = 0
    first_failed: str = ""

    @property
    def middle_prefix(self) -> str:
        return file_path((self.files // PER_DIR // 2) * PER_DIR).rsplit("/", 1)[0] + "/"

    def summary(self) -> str:
        kinds = self.kinds
        return (f"{self.files:,} files: {self.remote:,} in the cloud ({self.cached:,} cached), "
                f"{self.local:,} local with an upload queued ({kinds.get('cooling', 0):,} "
                f"cooling down, {kinds.get('due', 0):,} due of which {self.retrying:,} "
                f"retrying, {kinds.get('in flight', 0):,} in flight, "
                f"{kinds.get('failed', 0):,} failed); {self.deletes:,} remote deletes pending; "
                f"registry {self.db_bytes / MIB:,.1f} MiB, built in {self.seconds:.1f} s")


def build_store(store: Store, rng: random.Random) -> None:
    """Fill a fresh data directory's registry (see the module docstring), then check it."""
    started = time.perf_counter()
    now = time.time()
    registry = SqliteRegistry(DataDir(store.data_dir).registry_path)
    try:
        registry.migrate()
        low, high = math.log(KIB), math.log(64 * MIB)
        uploaded_bytes = 0
        for chunk_start in range(0, store.files, CHUNK):
            files: list[tuple[Any, ...]] = []
            queue: list[tuple[Any, ...]] = []
            cache: list[tuple[Any, ...]] = []
            for i in range(chunk_start, min(chunk_start + CHUNK, store.files)):
                path, version = file_path(i), i + 1
                size = int(math.exp(rng.uniform(low, high)))
                sha = f"{i:064x}"
                created = now - rng.uniform(DAY, 90 * DAY)
                if is_local(i):
                    modified = now - rng.uniform(0, 600)
                    files.append((path, size, sha, "image/jpeg", created, modified, "local",
                                  version, 0, None, None, None, None))
                    queue.append(queue_row(store, path, version, modified, now, rng))
                    store.local += 1
                    continue
                modified = created + rng.uniform(0, DAY)
                files.append((path, size, sha, "image/jpeg", created, modified, "remote",
                              version, 0, REMOTE, path, f'"{i:032x}"', modified + 600))
                uploaded_bytes += size
                if store.remote % 10 == 0:
                    cache.append((path, version, size, sha, now - rng.uniform(0, 7 * DAY),
                                  store.cached))
                    store.cached += 1
                    store.cached_bytes += size
                store.remote += 1
            with registry.transaction() as tx:
                conn = tx._conn  # rows straight in: the triggers keep the counters
                conn.executemany(
                    "INSERT INTO files (path, size, sha256, content_type, created, modified, "
                    "location, version, inode, remote, remote_key, remote_etag, uploaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
                conn.executemany(
                    "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, "
                    "leased_until, lease_owner, last_error, created, updated) "
                    "VALUES (?, 'upload', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", queue)
                conn.executemany(
                    "INSERT INTO cache_entries (path, version, size, sha256, last_access, slot) "
                    "VALUES (?, ?, ?, ?, ?, ?)", cache)
            log(f"{store.name}: {min(chunk_start + CHUNK, store.files):,} of "
                f"{store.files:,} files")
        store.deletes = max(1, store.files // 1000)
        with registry.transaction() as tx:
            # Remote copies of files deleted since: their paths are no longer registered.
            tx._conn.executemany(
                "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, "
                "created, updated) VALUES (?, 'delete', ?, ?, ?, 0, 'pending', ?, ?)",
                ((f"trash/{j:07d}.jpg", store.files + 1 + j, REMOTE,
                  now + (-1 if j % 2 else 1) * rng.uniform(1, 600), now - 60, now - 60)
                 for j in range(store.deletes)))
            add_jobs(tx, store, now)
            hits, misses = 3 * store.files, store.files // 2
            tx.counters.add({
                "seq.version": store.files + store.deletes,
                "uploads.done": store.remote,
                "uploads.bytes": uploaded_bytes,
                "cache.hits": hits, "cache.hit_bytes": hits * 2 * MIB,
                "cache.misses": misses, "cache.fills": misses,
                "cache.remote_bytes": misses * 6 * MIB, "cache.evictions": misses - store.cached,
            })
        check_counters(registry, store)
        first = registry.read.queue.failed_page("", 1)
        store.first_failed = first[0].path if first else ""
    finally:
        registry.close()
    # As a long-running store has it: the WAL checkpointed into the database file.
    with contextlib.closing(sqlite3.connect(DataDir(store.data_dir).registry_path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.db_bytes = sum(f.stat().st_size for f in store.data_dir.glob("registry.sqlite3*"))
    store.seconds = time.perf_counter() - started


def queue_row(store: Store, path: str, version: int, modified: float, now: float,
              rng: random.Random) -> tuple[Any, ...]:
    """(path, version, remote, not_before, attempts, state, leased_until, lease_owner,
    last_error, created, updated) of the upload of the next local file."""
    k = store.local
    kind = upload_kind(k)
    store.kinds[kind] = store.kinds.get(kind, 0) + 1
    if kind == "failed":
        updated = rng.uniform(modified, now)
        return (path, version, REMOTE, updated, 20, "failed", None, None, ERRORS[k % 3],
                modified, updated)
    if kind == "in flight":
        return (path, version, REMOTE, now - 30, 0, "pending", now + DAY, OWNER, None,
                modified, now - 30)
    if kind == "due":
        due = rng.uniform(modified, now)
        if k % 40 == 2:
            store.retrying += 1
            return (path, version, REMOTE, due, 1 + k % 5, "pending", None, None,
                    ERRORS[k % 3], modified, due)
        return (path, version, REMOTE, due, 0, "pending", None, None, None, modified, modified)
    return (path, version, REMOTE, now + rng.uniform(60, 3600), 0, "pending", None, None,
            None, modified, modified)


def add_jobs(tx: Tables, store: Store, now: float) -> None:
    """A finished move-to-cloud and a running move-to-local, leased by a live-looking owner
    (so this server's runner leaves it alone): the dashboard's "Move files" card."""
    columns = ("kind, state, options, total, total_bytes, done, bytes, errors, last_error, "
               "cursor, scanned, created, updated, finished, leased_until, lease_owner")
    tx._conn.executemany(
        f"INSERT INTO jobs ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [("move-to-cloud", "done", "{}", store.files, store.files * 6 * MIB, store.files,
          store.files * 6 * MIB, 0, None, file_path(store.files - 1), 1, now - 30 * DAY,
          now - 29 * DAY, now - 29 * DAY, None, None),
         ("move-to-local", "running", '{"delete_remote": false}', store.remote,
          store.remote * 6 * MIB, store.remote // 3, store.remote * 2 * MIB, 1, ERRORS[0],
          file_path(store.files // 2), 0, now - 3600, now - 1, None, now + DAY, OWNER)],
    )


def check_counters(registry: SqliteRegistry, store: Store) -> None:
    """Every counter the pages show agrees with a recount of its table."""
    counters = registry.read.counters.all()
    with contextlib.closing(sqlite3.connect(registry.path)) as reader:  # the recount's own SQL
        recount, top, highest = recount_tables(reader)
    wrong = {name: (counters.get(name), value) for name, value in recount.items()
             if counters.get(name) != value}
    if wrong:
        raise BenchError(f"{store.name}: counters disagree with a recount (counter, recount): "
                         f"{wrong}")
    entries_ = recount["cache.entries"]
    if top != entries_:
        raise BenchError(f"{store.name}: {entries_} cache entries in slots 0..{top - 1}")
    if counters["seq.version"] < highest:
        raise BenchError(f"{store.name}: seq.version {counters['seq.version']} is below a "
                         f"version in use ({highest})")
    expected = {"files": store.files, "files.local": store.local, "files.remote": store.remote,
                "cache.entries": store.cached, "queue.upload.failed": store.kinds["failed"],
                "queue.delete.pending": store.deletes}
    off = {name: (counters[name], value) for name, value in expected.items()
           if counters[name] != value}
    if off:
        raise BenchError(f"{store.name}: not the store designed (counter, expected): {off}")


def recount_tables(reader: sqlite3.Connection) -> tuple[dict[str, int], int, int]:
    """What the counters should say, counted from the tables; one past the cache's highest
    slot; the highest version in use."""
    recount: dict[str, int] = {}
    for location, count, size in reader.execute(
            "SELECT location, count(*), sum(size) FROM files GROUP BY location"):
        recount[f"files.{location}"], recount[f"bytes.{location}"] = count, size
    recount["files"] = recount.get("files.local", 0) + recount.get("files.remote", 0)
    recount["bytes"] = recount.get("bytes.local", 0) + recount.get("bytes.remote", 0)
    for op in ("upload", "delete"):
        for state in ("pending", "failed"):
            recount[f"queue.{op}.{state}"] = 0
    for op, state, count in reader.execute(
            "SELECT op, state, count(*) FROM queue GROUP BY op, state"):
        recount[f"queue.{op}.{state}"] = count
    entries_, size_, top = reader.execute(
        "SELECT count(*), coalesce(sum(size), 0), coalesce(max(slot) + 1, 0) "
        "FROM cache_entries").fetchone()
    recount["cache.entries"], recount["cache.bytes"] = entries_, size_
    highest = reader.execute("SELECT max(v) FROM (SELECT max(version) AS v FROM files "
                             "UNION ALL SELECT max(version) FROM queue)").fetchone()[0]
    return recount, top, highest


# -- the server -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(store: Store, token: str, logs: Path) -> Iterator[int]:
    """`filestore serve` on the store, while this process holds the live lock; its port."""
    port = free_port()
    env = filestore_env({
        **filestore_settings(store.data_dir, port),
        "FILESTORE_SERVER__HOST": HOST,
        "FILESTORE_AUTH__TOKEN": token,
        "FILESTORE_UPLOAD__ENABLED": "false",  # the queue stays as built
        "FILESTORE_CACHE__MAX_SIZE": str(max(10 * GIB, store.cached_bytes * 5 // 4)),
        "FILESTORE_CACHE__MIN_FREE": "0",
    })
    live = DataDir(store.data_dir)
    live.join()  # see the module docstring: the server is then not the directory's only user
    server = Process(f"filestore ({store.name})",
                     [*filestore_command(), "serve", "--workers", "1"],
                     logs / f"filestore-{store.name}.log", env, log_command=True)
    try:
        server.start()
        seconds = server.wait_port(port)
        log(f"{server.name}: pid {server.pid} on port {port}, ready in {seconds:.1f} s")
        yield port
    finally:
        status = server.stop()
        live.leave()
        log(f"{server.name}: stopped (exit status {status})")
    problems = log_problems(server.log_path, LOG_MARKS)
    if problems:
        raise BenchError(f"{server.name} logged problems:\n" + "\n".join(problems[:10]))


class Client:
    """Requests on one keep-alive connection (reopened if the server closed it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes, float]:
        """(status, headers, body, seconds from sending to the body's last byte)."""
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.RemoteDisconnected) as exc:
                self.conn.close()  # idle too long: the next attempt reconnects
                if attempt == 2:
                    raise BenchError(f"{method} {path} failed: {exc!r}") from None
                continue
            except (OSError, http.client.HTTPException) as exc:
                raise BenchError(f"{method} {path} failed: {exc!r}") from None
            return response.status, response.msg, data, time.perf_counter() - started
        raise AssertionError("unreachable")


def sign_in(port: int, token: str) -> str:
    """The session cookie from the login form, as a `Cookie` header value."""
    client = Client(port)
    try:
        status, headers, body, _ = client.request(
            "POST", "/admin/login", {"content-type": "application/x-www-form-urlencoded"},
            urlencode({"token": token, "next": "/admin"}).encode())
    finally:
        client.close()
    cookies: SimpleCookie = SimpleCookie()
    for header in headers.get_all("set-cookie") or []:
        cookies.load(header)
    if status != 303 or COOKIE not in cookies:
        raise BenchError(f"POST /admin/login -> {status}, no {COOKIE} cookie: {body[:200]!r}")
    return f"{COOKIE}={cookies[COOKIE].value}"


# -- the pages ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Page:
    name: str
    url: str
    bearer: bool  # the JSON API with a bearer token; else the HTML page with the session cookie
    check: Callable[[bytes], str | None]  # why the body is not the store's page, or None
    rows: int | None = None  # files or failed uploads a list page shows


def pages(store: Store) -> list[Page]:
    middle = store.middle_prefix
    first_in_middle = store.files // PER_DIR // 2 * PER_DIR

    def shows(*texts: str) -> Callable[[bytes], str | None]:
        def check(body: bytes) -> str | None:
            text = body.decode(errors="replace")
            missing = [t for t in texts if t not in text]
            return f"does not show {missing}" if missing else None
        return check

    def stats_json(body: bytes) -> str | None:
        figures = json.loads(body)
        upload = figures["queue"]["upload"]
        # The due/waiting split adds up to the pending count, or both are lower bounds.
        split = upload["due"] + upload["waiting"]
        adds_up = split == upload["pending"] if upload["exact"] else split <= upload["pending"]
        got = (figures["files"]["count"], upload["failed"], upload["in_flight"],
               figures["cache"]["entries"], adds_up)
        want = (store.files, store.kinds["failed"], store.kinds["in flight"], store.cached, True)
        return None if got == want else f"figures {got}, expected {want}"

    return [
        Page("GET /admin", "/admin", False,
             shows("Statistics", f"{store.files:,}", "move-to-local")),
        Page("GET /admin/api/stats", "/admin/api/stats", True, stats_json),
        Page("GET /admin/files", "/admin/files", False,
             shows(file_path(0), file_path(min(store.files, PAGE_SIZE) - 1)),
             min(store.files, PAGE_SIZE)),
        Page(f"GET /admin/files?prefix={middle}", f"/admin/files?prefix={quote(middle)}", False,
             shows(file_path(first_in_middle)),
             min(store.files - first_in_middle, PER_DIR, PAGE_SIZE)),
        Page("GET /admin/failed", "/admin/failed", False, shows(store.first_failed),
             min(store.kinds["failed"], PAGE_SIZE)),
    ]


@dataclasses.dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    first_ms: float = 0.0  # the first request to a fresh server (HTTP only)
    body_bytes: int = 0
    rows: int | None = None  # rows of a list page

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)  # nearest rank
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def as_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median, "p95_ms": self.p95, "mean_ms":
                statistics.fmean(self.samples_ms), "max_ms": max(self.samples_ms),
                "first_ms": self.first_ms, "body_bytes": self.body_bytes,
                "requests": len(self.samples_ms), "rows": self.rows}


def time_page(port: int, page: Page, headers: dict[str, str],
              args: argparse.Namespace) -> Timing:
    client = Client(port)
    try:
        first = 0.0
        samples: list[float] = []
        size = 0
        for n in range(args.warmup + args.requests):
            status, _, body, seconds = client.request("GET", page.url, headers)
            if status != 200:
                raise BenchError(f"{page.name} -> {status}: {body[:300]!r}")
            if n == 0:
                first, size = seconds * 1000, len(body)
                problem = page.check(body)
                if problem:
                    raise BenchError(f"{page.name}: {problem}")
            if n >= args.warmup:
                samples.append(seconds * 1000)
        return Timing(samples, first, size, page.rows)
    finally:
        client.close()


def time_calls(call: Callable[[], object], repeats: int) -> Timing:
    call()  # statements prepared, pages cached
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(samples)


def server_side(store: Store, repeats: int) -> dict[str, Timing]:
    """The pages' data read in this process (see the module docstring)."""
    registry = SqliteRegistry(DataDir(store.data_dir).registry_path)
    try:
        settings = Settings(storage=StorageSettings(data_dir=str(store.data_dir)),
                            cache=CacheSettings(max_size=10 * GIB))
        local = LocalStore(store.data_dir, min_free=0)
        reader = registry.read

        def files_page(prefix: str) -> Callable[[], object]:
            return lambda: describe(reader, local,
                                    reader.files.listing(prefix, "", PAGE_SIZE + 1)[:PAGE_SIZE])

        calls = {
            "stats.figures()": lambda: stats.figures(registry, settings),
            "files page: files.listing + describe": files_page(""),
            "files page under the middle prefix": files_page(store.middle_prefix),
            "failed page: queue.failed_page": lambda: reader.queue.failed_page("",
                                                                          PAGE_SIZE + 1),
        }
        return {name: time_calls(call, repeats) for name, call in calls.items()}
    finally:
        registry.close()


# -- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
            "cpus": str(nproc()), "git": git_revision() or "?",
            **package_versions("filestore", "starlette", "uvicorn", "jinja2", "httptools",
                               "uvloop")}


def print_report(args: argparse.Namespace, small: Store, large: Store,
                 http_results: dict[str, tuple[Timing, Timing]],
                 in_process: dict[str, tuple[Timing, Timing]]) -> bool:
    s, b = count_text(small.files), count_text(large.files)
    print(f"1. HTTP: {args.requests} sequential requests per page on one keep-alive "
          f"connection after {args.warmup} untimed, `filestore serve --workers 1`; ms")
    print()
    rows = [["page", f"{s} first", f"{s} p50", f"{s} p95", f"{b} first", f"{b} p50",
             f"{b} p95", f"{b}/{s} p50", f"rows {s}/{b}", f"{b} KiB", "target"]]
    all_ok = True
    for name, (lo, hi) in http_results.items():
        ok = hi.median < TARGET_MS
        all_ok &= ok
        rows.append([name, f"{lo.first_ms:.1f}", f"{lo.median:.2f}", f"{lo.p95:.2f}",
                     f"{hi.first_ms:.1f}", f"{hi.median:.2f}", f"{hi.p95:.2f}",
                     ratio_text(hi.median, lo.median),
                     "-" if hi.rows is None else f"{lo.rows}/{hi.rows}",
                     f"{hi.body_bytes / KIB:.1f}",
                     verdict(ok)])
    print_rows(rows, right_align=True)
    print(f"target: median < {TARGET_MS:.0f} ms with {large.files:,} files: "
          f"{'met by every page' if all_ok else 'MISSED (see above)'}")
    print(f"(a list page shows up to {PAGE_SIZE} rows: the small store's lists are shorter, "
          "so their ratio includes the extra rows)")
    print()
    print(f"2. Server side alone, in this process: median / p95 of {args.requests} calls "
          f"after one untimed; ms")
    print()
    rows = [["data of", f"{s} p50", f"{s} p95", f"{b} p50", f"{b} p95", f"{b}/{s} p50"]]
    for name, (lo, hi) in in_process.items():
        rows.append([name, f"{lo.median:.3f}", f"{lo.p95:.3f}", f"{hi.median:.3f}",
                     f"{hi.p95:.3f}", ratio_text(hi.median, lo.median)])
    print_rows(rows, right_align=True)
    return all_ok


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path, scratch: Path) -> int:
    started = time.perf_counter()
    found = versions()
    busy_before = cpu_busy()
    print(f"Admin page benchmark{' (--quick)' if args.quick else ''}: "
          + versions_text(found) + f"; data directories in {scratch}")
    logs = work / "logs"
    logs.mkdir()
    rng = random.Random(args.seed)
    token = "bench-" + os.urandom(16).hex()
    results: dict[str, dict[str, Timing]] = {}
    in_process: dict[str, dict[str, Timing]] = {}
    stores = [Store("small", scratch / "small", args.small),
              Store("large", scratch / "large", args.files)]
    for store in stores:
        store.data_dir.mkdir()
        log(f"{store.name}: building {store.files:,} files")
        build_store(store, rng)
        log(f"{store.name}: {store.summary()}")
        with serving(store, token, logs) as port:
            cookie = sign_in(port, token)
            results[store.name] = {}
            for page in pages(store):
                headers = ({"authorization": f"Bearer {token}"} if page.bearer
                           else {"cookie": cookie})
                timing = results[store.name][page.name] = time_page(port, page, headers, args)
                log(f"{store.name}: {page.name}: median {timing.median:.2f} ms, "
                    f"p95 {timing.p95:.2f} ms")
        log(f"{store.name}: server side in process")
        in_process[store.name] = server_side(store, args.requests)
    small, large = stores
    busy_after = cpu_busy()

    print()
    for store in stores:
        print(f"{store.name} store: {store.summary()}")
    print()
    # Pages by position: the prefix page's name differs between the stores.
    http_rows = {name: (results["small"][small_name], results["large"][name]) for small_name,
                 name in zip(results["small"], results["large"], strict=True)}
    process_rows = {name: (in_process["small"][name], in_process["large"][name])
                    for name in in_process["large"]}
    all_ok = print_report(args, small, large, http_rows, process_rows)
    problems = busy_problems(busy_before, busy_after, "absolute figures")
    print_problems(problems)
    print()
    print(f"total {time.perf_counter() - started:.1f} s")
    write_json(args.json, {
        "versions": found,
        "settings": {"files": args.files, "small": args.small, "requests": args.requests,
                     "warmup": args.warmup, "seed": args.seed, "quick": args.quick},
        "stores": {store.name: {key: value for key, value in dataclasses.asdict(store).items()
                                if key != "data_dir"} for store in stores},
        "http": {store: {name: timing.as_dict() for name, timing in pages_.items()}
                 for store, pages_ in results.items()},
        "in_process": {store: {name: timing.as_dict() for name, timing in calls.items()}
                       for store, calls in in_process.items()},
        "target_ms": TARGET_MS, "target_met": all_ok,
        "cpu_busy_before": busy_before, "cpu_busy_after": busy_after, "problems": problems,
    })
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def body(work: Path) -> int:
        # The data directories live apart from `work` (logs), in memory when possible: building
        # the registry (synchronous = FULL on every commit) then costs no disk time.
        with temp_directory("filestore-admin-", args.keep, in_memory=True) as scratch:
            return run(args, work, scratch)

    return run_main("bench/admin.py", "filestore-admin-", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
