"""Cache-miss benchmark: a GET of a file only the cloud has, against a plain aioboto3 GET.

What is measured
    One `moto_server` on 127.0.0.1 (a free port) is the S3 store. One object of --size random
    bytes (default 32 MiB) is made "only in the cloud": it is PUT into filestore with
    `upload.delay = 0s`, the registry (`data_dir/registry.sqlite3`, opened read-only) is polled
    until its row says `location = 'remote'` and the bytes were handed to `data_dir/cache/`, and
    then the cached copy `data_dir/cache/<path>` is deleted by hand (which is exactly what the
    cache's eviction will do). The measurements run against a second `filestore serve` (1 worker)
    on the same data directory, with `upload.delay = 1h` so that a second, local-only file of the
    same size stays in `data_dir/files/`.

    1. cold GET, --runs times (default 5), interleaved:
       - direct: an aioboto3 `get_object` of the object from the same moto, in this process, with
         filestore's client settings (remote/s3.py: path-style, request/response checksums
         "when_required", 32 pooled connections, its timeouts, one attempt), the body read with
         `iter_chunks(1 MiB)`. One client for all runs (filestore keeps one, too).
       - filestore: `GET /files/<path>` over a fresh raw socket (`Connection: close`), the body
         read with `recv_into` in 1 MiB reads into a preallocated buffer and hashed afterwards.
       Time to first byte (TTFB) runs from the request (for filestore: from the TCP connect) to
       the arrival of the first body byte, total to the arrival of the last. Before every
       filestore run the cached copy is deleted again, after the previous fill has completely
       finished (the cached file is back and no `tmp/fill-*` file is left). One unmeasured
       warm-up round of each comes first (botocore's first call loads its models; filestore's
       first fill opens its connection to moto). Targets: TTFB <= 1.2 x direct + 5 ms, total
       <= 1.3 x direct. Every body's SHA-256 is checked, and moto's log must show exactly one
       GET of the object per filestore cold GET.
       For filestore, the "last byte" column is the gap between the arrival of byte n-1 and byte
       n: filestore holds the last byte back until the whole download's SHA-256 is verified.
    2. --concurrency (default 32) cold GETs of the evicted object at once: all connections are
       opened first, then the requests are sent back to back and read by one selector loop in
       this process (clients still waiting for their first byte are served first). Each client's
       TTFB is taken from its own request; reported relative to the TTFB of the client whose
       request went first (max and median over the others; target: all within 1.2x). moto's log
       must show exactly one GET of the object, and every body must have the object's SHA-256.
    3. warm GET: the same object, now cached (`data_dir/cache/`), against the local-only file
       (`data_dir/files/`), both through filestore and measured like the cold GET, after one
       unmeasured GET of each (page cache), interleaved --warm-runs times (default 20; a warm
       GET takes milliseconds). Target: cached total within 10% of local.

    Medians throughout; every run is listed too.

Why
    A cache miss should cost about what fetching the object from the store costs, first bytes
    included, and a crowd of clients asking for the same missing object should cost one download.
    The aioboto3 GET from the same moto is the yardstick: whatever moto and the machine cost
    cancels out, and what is left is what filestore adds.

Usage
    python bench/miss.py [--size 32MiB] [--runs 5] [--concurrency 32] [--warm-runs 20]
                         [--timeout 60] [--json PATH] [--keep]

Needs moto's server (`pip install 'moto[server]'`, part of the `test` extra). Everything binds
127.0.0.1; the default run takes well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import os
import selectors
import socket
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    GIB,
    HOST,
    KIB,
    MIB,
    WARNING_MARKS,
    BenchError,
    Process,
    Timing,
    add_output_options,
    args_json,
    cpu_seconds,
    filestore_command,
    filestore_env,
    filestore_settings,
    filestore_token,
    fmt_runs,
    free_port,
    get_request,
    log,
    log_problems,
    nproc,
    package_versions,
    parse_head,
    parse_size,
    print_problems,
    print_rows,
    put_file,
    random_blocks,
    raw_get,
    run_main,
    size_text,
    started,
    verdict,
    versions_text,
    write_json,
)
from s3lib import CLIENT_CONFIG_TEXT, Moto, aio_client, remote_settings

BUCKET = "filestore-miss"
PREFIX = "fs"  # filestore's remote is s3://<bucket>/fs
COLD_PATH = "bench/miss/cold.bin"  # the object only the cloud has
LOCAL_PATH = "bench/miss/local.bin"  # a same-size file only local disk has

POLL_SECONDS = 0.01
PORT_TIMEOUT = 0.2

TTFB_FACTOR, TTFB_SLACK_MS = 1.2, 5.0
TOTAL_FACTOR = 1.3
JOIN_FACTOR = 1.2
WARM_FACTOR = 1.10


# -- arguments ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/miss.py",
        description="Cold (cache-miss) GET through filestore vs a direct aioboto3 GET from the "
                    "same S3 store; concurrent misses; warm (cached) vs local GET.",
    )
    parser.add_argument("--size", type=parse_size, default=32 * MIB,
                        help="size of the object (default 32MiB)")
    parser.add_argument("--runs", type=int, default=5,
                        help="cold GETs of each kind; the median is reported (default 5)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="clients in the concurrent cold GET (default 32)")
    parser.add_argument("--warm-runs", type=int, default=20,
                        help="warm GETs of each kind (default 20)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds any one GET or wait may take (default 60)")
    add_output_options(parser, "payloads, data directory, server logs")
    args = parser.parse_args(argv)
    if args.size < 2:
        parser.error("--size must be at least 2 bytes")
    if args.size > 4 * GIB:
        parser.error("--size is held in memory: at most 4GiB")
    if args.runs < 1 or args.warm_runs < 1:
        parser.error("--runs and --warm-runs must be at least 1")
    if not 2 <= args.concurrency <= 256:
        parser.error("--concurrency must be from 2 to 256")
    return args


# -- moto -----------------------------------------------------------------------------------------


# -- filestore ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Filestore:
    """One data directory and the `filestore serve` processes that use it."""

    data_dir: Path
    moto_url: str
    log_path: Path
    token: str = ""

    def settings(self, port: int, delay: str) -> dict[str, str]:
        return {
            **filestore_settings(self.data_dir, port),
            "FILESTORE_SERVER__WORKERS": "1",
            "FILESTORE_UPLOAD__DELAY": delay,
            **remote_settings(f"s3://{BUCKET}/{PREFIX}", self.moto_url),
        }

    def cached(self, path: str) -> Path:
        return self.data_dir / "cache" / path

    def local(self, path: str) -> Path:
        return self.data_dir / "files" / path

    def fills_in_progress(self) -> list[Path]:
        return sorted((self.data_dir / "tmp").glob("fill-*"))

    def location(self, path: str) -> str | None:
        """The registry's `files.location` of `path` (None: no row, or not readable yet)."""
        registry = self.data_dir / "registry.sqlite3"
        if not registry.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{registry}?mode=ro", uri=True,
                                                    timeout=0.5)) as conn:
                row = conn.execute("SELECT location FROM files WHERE path = ?",
                                   (path,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    @contextlib.contextmanager
    def serving(self, delay: str) -> Iterator[tuple[Process, int]]:
        """A running `filestore serve --workers 1`, stopped on the way out whatever happens."""
        port = free_port()
        env = filestore_env(self.settings(port, delay))
        if not self.token:
            self.token = filestore_token(env)
        process = Process(f"filestore serve (upload.delay {delay})",
                          [*filestore_command(), "serve", "--workers", "1"], self.log_path, env,
                          log_command=True)
        with started(process, port, POLL_SECONDS, PORT_TIMEOUT):
            yield process, port


def wait_until(process: Process, ready: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll `ready()` every POLL_SECONDS until it is true; the seconds it took. BenchError if the
    server exits or `timeout` passes first."""
    started = time.monotonic()
    while not ready():
        process.check_alive()
        if time.monotonic() - started > timeout:
            raise BenchError(f"{what}: not within {timeout:.0f}s\n{process.log_tail()}")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def fill_done(fs: Filestore, path: str) -> Callable[[], bool]:
    """Whether the last fill of `path` has completely finished: the cached file is back and no
    fill temp file is left (a fill leaves the server's table of fills before its temp file is
    unlinked, so a GET after this starts a fill of its own instead of joining a finished one)."""
    return lambda: fs.cached(path).is_file() and not fs.fills_in_progress()


def evict(fs: Filestore, path: str) -> None:
    """What the cache's eviction will do: delete the cached copy (the registry keeps saying
    'remote', so the next GET reads through)."""
    fs.cached(path).unlink()


# -- clients --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reader:
    """One client of the concurrent GET."""

    sock: socket.socket
    sent_at: float = 0.0
    head: bytearray = dataclasses.field(default_factory=bytearray)
    in_body: bool = False
    got: int = 0
    first_at: float | None = None
    last_at: float | None = None
    digest: Any = dataclasses.field(default_factory=hashlib.sha256)


@dataclasses.dataclass
class ClientResult:
    sent_ms: float  # when the request went out, from the first request
    ttfb_ms: float  # from its own request
    total_ms: float  # from its own request
    sha256: str


def concurrent_get(port: int, path: str, size: int, clients: int,
                   timeout: float) -> list[ClientResult]:
    """`clients` GETs of `path` at once: connect all, send all requests back to back, read all
    bodies in one selector loop (those still waiting for their first body byte first, 64 KiB at
    a time, so that their first byte is stamped without waiting behind others' 1 MiB reads)."""
    what = f"concurrent GET {path}"
    readers: list[Reader] = []
    selector = selectors.DefaultSelector()
    request = get_request(port, path)
    buffer = bytearray(MIB)
    view = memoryview(buffer)

    def feed(reader: Reader, data: memoryview | bytearray, stamp: float) -> None:
        if not data:
            return
        if reader.first_at is None:
            reader.first_at = stamp
        reader.digest.update(data)
        reader.got += len(data)
        if reader.got > size:
            raise BenchError(f"{what}: more than {size} body bytes")
        if reader.got == size:
            reader.last_at = stamp
            selector.unregister(reader.sock)

    try:
        for _ in range(clients):
            sock = socket.create_connection((HOST, port), timeout=timeout)
            readers.append(Reader(sock))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for reader in readers:
            reader.sock.sendall(request)
            reader.sent_at = time.perf_counter()
        for reader in readers:
            reader.sock.setblocking(False)
            selector.register(reader.sock, selectors.EVENT_READ, reader)
        deadline = time.monotonic() + timeout
        while selector.get_map():
            if time.monotonic() > deadline:
                left = sum(1 for r in readers if r.last_at is None)
                raise BenchError(f"{what}: {left} of {clients} bodies not complete within "
                                 f"{timeout:.0f}s")
            events = selector.select(1.0)
            events.sort(key=lambda event: event[0].data.first_at is not None)
            for key, _ in events:
                reader = key.data
                limit = 64 * KIB if reader.first_at is None else MIB
                try:
                    count = reader.sock.recv_into(view, limit)
                except BlockingIOError:
                    continue
                stamp = time.perf_counter()
                if count == 0:
                    raise BenchError(f"{what}: a connection closed after {reader.got} of "
                                     f"{size} body bytes")
                if reader.in_body:
                    feed(reader, view[:count], stamp)
                    continue
                reader.head += view[:count]
                end = reader.head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                status, headers = parse_head(bytes(reader.head[:end]), what)
                if status != 200 or headers.get("content-length") != str(size):
                    raise BenchError(f"{what} -> {status}, content-length "
                                     f"{headers.get('content-length')}: "
                                     f"{bytes(reader.head[end + 4:])[:300]!r}")
                reader.in_body = True
                feed(reader, reader.head[end + 4:], stamp)
    except OSError as exc:
        raise BenchError(f"{what} failed: {exc!r}") from None
    finally:
        selector.close()
        for reader in readers:
            reader.sock.close()
    origin = readers[0].sent_at
    results = []
    for reader in readers:
        assert reader.first_at is not None and reader.last_at is not None
        results.append(ClientResult((reader.sent_at - origin) * 1000,
                                    (reader.first_at - reader.sent_at) * 1000,
                                    (reader.last_at - reader.sent_at) * 1000,
                                    reader.digest.hexdigest()))
    return results


class DirectS3:
    """The yardstick: one aioboto3 client, opened once, streaming GETs of the object."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await self._stack.enter_async_context(aio_client(self.endpoint))

    async def close(self) -> None:
        await self._stack.aclose()

    async def get(self, key: str, size: int) -> Timing:
        chunks: list[bytes] = []
        got = 0
        first = None
        started = time.perf_counter()
        response = await self._client.get_object(Bucket=BUCKET, Key=key)
        body = response["Body"]
        try:
            async for chunk in body.iter_chunks(MIB):
                now = time.perf_counter()
                if first is None:
                    first = now
                chunks.append(chunk)
                got += len(chunk)
            last = time.perf_counter()
        finally:
            body.close()
        if got != size or first is None:
            raise BenchError(f"direct GET of {key}: {got} bytes, expected {size}")
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        return Timing((first - started) * 1000, (last - started) * 1000, None, digest.hexdigest())


def event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop when installed (filestore's own S3 client runs on uvloop under uvicorn)."""
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, f"uvloop {package_versions('uvloop')['uvloop']}"


# -- the benchmark --------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    direct: list[Timing] = dataclasses.field(default_factory=list)
    cold: list[Timing] = dataclasses.field(default_factory=list)
    cold_moto_gets: list[int] = dataclasses.field(default_factory=list)
    crowd: list[ClientResult] = dataclasses.field(default_factory=list)
    crowd_moto_gets: int = 0
    cached: list[Timing] = dataclasses.field(default_factory=list)
    local: list[Timing] = dataclasses.field(default_factory=list)
    setup: dict[str, float] = dataclasses.field(default_factory=dict)
    # CPU seconds each process used per cold GET (direct: moto and this process only).
    direct_cpu: list[dict[str, float]] = dataclasses.field(default_factory=list)
    cold_cpu: list[dict[str, float]] = dataclasses.field(default_factory=list)


class CpuMeter:
    """CPU seconds used by named processes between two points (user + system, all threads)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def now(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        after = self.now()
        return {name: after[name] - before[name] for name in self.pids}


def write_payload(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for block in random_blocks(size):
            out.write(block)
            digest.update(block)
    return digest.hexdigest()


def check_body(timing: Timing | ClientResult, expected: str, what: str) -> None:
    if timing.sha256 != expected:
        raise BenchError(f"{what}: body SHA-256 {timing.sha256}, expected {expected}")


def make_cold(fs: Filestore, moto: Moto, source: Path, size: int, timeout: float,
              results: Results) -> None:
    """PUT the object with upload.delay 0, wait until it is uploaded and its bytes were handed
    to the cache area, stop the server, delete the cached copy."""
    with fs.serving("0s") as (process, port):
        started = time.monotonic()
        put_file(port, fs.token, COLD_PATH, source, size)
        results.setup["put_s"] = time.monotonic() - started
        results.setup["uploaded_s"] = wait_until(
            process, lambda: fs.location(COLD_PATH) == "remote",
            f"{COLD_PATH} recorded as uploaded", timeout)
        wait_until(process, lambda: fs.cached(COLD_PATH).is_file()
                   and not fs.local(COLD_PATH).exists(),
                   f"{COLD_PATH} moved to the cache area", timeout)
    stored = moto.object_size(BUCKET, f"{PREFIX}/{COLD_PATH}")
    if stored != size:
        raise BenchError(f"moto holds {stored} bytes of {COLD_PATH}, expected {size}")
    evict(fs, COLD_PATH)
    log(f"{COLD_PATH}: uploaded {results.setup['uploaded_s']:.2f} s after its PUT; cached copy "
        "deleted: only the cloud has it")


def measure(args: argparse.Namespace, fs: Filestore, moto: Moto, sha_cold: str, sha_local: str,
            local_source: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
            results: Results) -> None:
    size, timeout = args.size, args.timeout
    key = f"{PREFIX}/{COLD_PATH}"
    direct = DirectS3(moto.url)
    with asyncio.Runner(loop_factory=loop_factory) as runner, \
            fs.serving("1h") as (process, port):
        runner.run(direct.open())
        try:
            put_file(port, fs.token, LOCAL_PATH, local_source, size)
            if fs.location(LOCAL_PATH) != "local" or not fs.local(LOCAL_PATH).is_file():
                raise BenchError(f"{LOCAL_PATH} is not a local-only file after its PUT")

            def cold_get(label: str) -> tuple[Timing, int]:
                before = moto.gets_of(BUCKET, key)
                timing = raw_get(port, COLD_PATH, size, timeout)
                check_body(timing, sha_cold, label)
                wait_until(process, fill_done(fs, COLD_PATH), f"{label}: the fill to finish",
                           timeout)
                return timing, moto.gets_of(BUCKET, key) - before

            # Warm-up, unmeasured: botocore's first call, filestore's first connection to moto.
            check_body(runner.run(direct.get(key, size)), sha_cold, "direct warm-up GET")
            cold_get("cold warm-up GET")
            evict(fs, COLD_PATH)

            # The client is this process; the direct GET's hashing comes after its timing, the
            # raw GET's too: both are in "client".
            cpu = CpuMeter({"filestore": process.pid, "moto": moto.process.pid,
                            "client": os.getpid()})
            for run in range(1, args.runs + 1):
                used = cpu.now()
                timing = runner.run(direct.get(key, size))
                results.direct_cpu.append(cpu.since(used))
                check_body(timing, sha_cold, f"direct GET {run}")
                results.direct.append(timing)
                used = cpu.now()
                cold, gets = cold_get(f"cold GET {run}")
                results.cold_cpu.append(cpu.since(used))
                evict(fs, COLD_PATH)
                results.cold.append(cold)
                results.cold_moto_gets.append(gets)
                log(f"run {run}: direct TTFB {timing.ttfb_ms:.1f} ms, total "
                    f"{timing.total_ms:.1f} ms; filestore cold TTFB {cold.ttfb_ms:.1f} ms, "
                    f"total {cold.total_ms:.1f} ms (last byte +{cold.last_gap_ms or 0:.1f} ms), "
                    f"{gets} GET(s) at moto")

            before = moto.gets_of(BUCKET, key)
            results.crowd = concurrent_get(port, COLD_PATH, size, args.concurrency, timeout)
            wait_until(process, fill_done(fs, COLD_PATH), "concurrent GETs: the fill to finish",
                       timeout)
            results.crowd_moto_gets = moto.gets_of(BUCKET, key) - before
            for n, client in enumerate(results.crowd):
                check_body(client, sha_cold, f"concurrent GET, client {n}")
            ttfbs = [c.ttfb_ms for c in results.crowd]
            log(f"{args.concurrency} concurrent cold GETs: TTFB {min(ttfbs):.1f}-"
                f"{max(ttfbs):.1f} ms, {results.crowd_moto_gets} GET(s) at moto")

            # Now cached. One unmeasured GET of each puts both in the page cache.
            check_body(raw_get(port, COLD_PATH, size, timeout), sha_cold, "cached warm-up GET")
            check_body(raw_get(port, LOCAL_PATH, size, timeout), sha_local, "local warm-up GET")
            for run in range(1, args.warm_runs + 1):
                if not fs.cached(COLD_PATH).is_file():
                    raise BenchError(f"{COLD_PATH} left the cache area during the warm GETs")
                cached = raw_get(port, COLD_PATH, size, timeout)
                check_body(cached, sha_cold, f"cached GET {run}")
                local = raw_get(port, LOCAL_PATH, size, timeout)
                check_body(local, sha_local, f"local GET {run}")
                results.cached.append(cached)
                results.local.append(local)
            log(f"warm: cached {statistics.median(t.total_ms for t in results.cached):.1f} ms, "
                f"local {statistics.median(t.total_ms for t in results.local):.1f} ms (median "
                "total)")
        finally:
            runner.run(direct.close())


# -- report ---------------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def mbps(size: int, ms: float) -> float:
    return size / (ms / 1000) / 1e6


def report(args: argparse.Namespace, results: Results, info: dict[str, Any]) -> dict[str, Any]:
    """Print the tables, the configuration and the problems; the same as a JSON-ready dict."""
    size = args.size
    d_ttfb, d_total = med([t.ttfb_ms for t in results.direct]), med(
        [t.total_ms for t in results.direct])
    c_ttfb, c_total = med([t.ttfb_ms for t in results.cold]), med(
        [t.total_ms for t in results.cold])
    c_gap = med([t.last_gap_ms or 0.0 for t in results.cold])
    ttfb_limit = TTFB_FACTOR * d_ttfb + TTFB_SLACK_MS
    ttfb_ok, total_ok = c_ttfb <= ttfb_limit, c_total <= TOTAL_FACTOR * d_total

    print()
    print(f"Cold GET of a {size_text(size)} object only the cloud (moto_server on 127.0.0.1) has, "
          f"median of {args.runs} run(s)")
    print(versions_text(info["versions"]) + f"; {info['cpus']} CPUs")
    print()
    rows = [["", "TTFB ms", "total ms", "MB/s", "last byte ms", "TTFB of each run",
             "total of each run"]]
    rows.append(["direct aioboto3 GET", f"{d_ttfb:.1f}", f"{d_total:.1f}",
                 f"{mbps(size, d_total):,.1f}", "",
                 fmt_runs([t.ttfb_ms for t in results.direct]),
                 fmt_runs([t.total_ms for t in results.direct])])
    rows.append(["filestore cold GET", f"{c_ttfb:.1f}", f"{c_total:.1f}",
                 f"{mbps(size, c_total):,.1f}", f"+{c_gap:.1f}",
                 fmt_runs([t.ttfb_ms for t in results.cold]),
                 fmt_runs([t.total_ms for t in results.cold])])
    rows.append(["filestore / direct", f"{c_ttfb / d_ttfb:.2f}x", f"{c_total / d_total:.2f}x",
                 "", "", fmt_runs([c.ttfb_ms / d.ttfb_ms for c, d in
                                   zip(results.cold, results.direct, strict=True)], 2),
                 fmt_runs([c.total_ms / d.total_ms for c, d in
                           zip(results.cold, results.direct, strict=True)], 2)])
    print_rows(rows)
    print(f"TTFB: {c_ttfb:.1f} ms {verdict(ttfb_ok)} the target <= {TTFB_FACTOR}x direct + "
          f"{TTFB_SLACK_MS:.0f} ms = {ttfb_limit:.1f} ms")
    print(f"total: {c_total / d_total:.2f}x {verdict(total_ok)} the target <= {TOTAL_FACTOR}x "
          "direct")
    print(f"last byte: the gap between byte n-1 and byte n of filestore's body (held back until "
          f"the download's SHA-256 is verified): median {c_gap:.1f} ms, each run "
          f"{fmt_runs([t.last_gap_ms or 0.0 for t in results.cold])}")
    print(f"GETs that reached moto per filestore cold GET: {results.cold_moto_gets}")
    cpu_ms = {label: {name: med([c[name] for c in items]) * 1000 for name in items[0]}
              for label, items in (("direct", results.direct_cpu),
                                   ("filestore", results.cold_cpu))}
    print()
    print("CPU ms per cold GET (median; user + system of each process, from the request until "
          "the fill was installed; clock ticks of 10 ms, so runs are coarse):")
    rows = [["", "filestore process", "moto", "client (this process)", "all"]]
    for label, title in (("direct", "direct aioboto3 GET"), ("filestore", "filestore cold GET")):
        used = cpu_ms[label]
        rows.append([title, f"{used['filestore']:.0f}", f"{used['moto']:.0f}",
                     f"{used['client']:.0f}", f"{sum(used.values()):.0f}"])
    print_rows(rows)

    crowd = results.crowd
    first = crowd[0]
    others = crowd[1:]
    ratios = [c.ttfb_ms / first.ttfb_ms for c in others]
    arrivals = [c.sent_ms + c.ttfb_ms for c in crowd]
    identical = len({c.sha256 for c in crowd}) == 1
    join_ok = max(ratios) <= JOIN_FACTOR
    print()
    print(f"{len(crowd)} concurrent cold GETs of the evicted object (request n went out "
          f"{crowd[-1].sent_ms:.2f} ms after request 1):")
    rows = [["first client TTFB ms", "others' TTFB ms (min-p50-max)", "TTFB ratio p50",
             "TTFB ratio max", "first-byte spread ms", "total ms (p50-max)", "GETs at moto",
             "bodies"]]
    rows.append([f"{first.ttfb_ms:.1f}",
                 f"{min(c.ttfb_ms for c in others):.1f}-{med([c.ttfb_ms for c in others]):.1f}"
                 f"-{max(c.ttfb_ms for c in others):.1f}",
                 f"{med(ratios):.2f}x", f"{max(ratios):.2f}x",
                 f"{max(arrivals) - min(arrivals):.1f}",
                 f"{med([c.total_ms for c in crowd]):.1f}-{max(c.total_ms for c in crowd):.1f}",
                 str(results.crowd_moto_gets),
                 "identical, SHA-256 ok" if identical else "DIFFER"])
    print_rows(rows)
    print(f"every client's first byte within {max(ratios):.2f}x of the first client's: "
          f"{verdict(join_ok)} the target <= {JOIN_FACTOR}x; one GET at moto: "
          f"{verdict(results.crowd_moto_gets == 1)}")

    w_cached = med([t.total_ms for t in results.cached])
    w_local = med([t.total_ms for t in results.local])
    w_cached_ttfb = med([t.ttfb_ms for t in results.cached])
    w_local_ttfb = med([t.ttfb_ms for t in results.local])
    w_ratio = w_cached / w_local
    print()
    print(f"Warm GET through filestore, median of {args.warm_runs} interleaved run(s):")
    rows = [["", "TTFB ms", "total ms", "MB/s", "total of each run"]]
    rows.append(["cached (data_dir/cache/)", f"{w_cached_ttfb:.2f}", f"{w_cached:.2f}",
                 f"{mbps(size, w_cached):,.1f}", fmt_runs([t.total_ms for t in results.cached])])
    rows.append(["local-only (data_dir/files/)", f"{w_local_ttfb:.2f}", f"{w_local:.2f}",
                 f"{mbps(size, w_local):,.1f}", fmt_runs([t.total_ms for t in results.local])])
    rows.append(["cached / local", f"{w_cached_ttfb / w_local_ttfb:.2f}x", f"{w_ratio:.2f}x",
                 "", ""])
    print_rows(rows)
    warm_ok = w_ratio <= WARM_FACTOR
    print(f"cached / local total {w_ratio:.2f}x {verdict(warm_ok)} the target <= "
          f"{WARM_FACTOR:.2f}x")

    print()
    print("configuration:")
    print(f"  command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(f"  object: {size_text(size)} of random bytes, s3://{BUCKET}/{PREFIX}/{COLD_PATH} at "
          f"moto_server {info['moto_url']}; local-only file {LOCAL_PATH} of the same size")
    print(f"  made cloud-only by: PUT with upload.delay 0s, registry location 'remote' after "
          f"{results.setup.get('uploaded_s', 0):.2f} s, data_dir/cache/{COLD_PATH} deleted "
          "(again before every cold GET, once the previous fill had finished)")
    print(f"  direct client ({info['loop']}, in this process, one client for all runs): "
          f"{info['client_config']}; get_object + iter_chunks(1 MiB)")
    print("  filestore client: raw socket in this process, fresh connection per GET "
          "(TTFB includes the TCP connect), Connection: close, recv_into in 1 MiB reads, "
          "SHA-256 after the last byte")
    print(f"  warm-up (unmeasured): 1 direct GET, 1 filestore cold GET; 1 cached and 1 local GET "
          f"before the warm runs; {args.runs} cold run(s), {args.warm_runs} warm run(s)")
    print("  filestore env of the measured server (`filestore serve --workers 1`; the set-up "
          "server had FILESTORE_UPLOAD__DELAY=0s):")
    for name, value in info["filestore_env"].items():
        print(f"    {name}={value}")

    problems = list(info["problems"])
    if any(n != 1 for n in results.cold_moto_gets):
        problems.append(f"GETs at moto per cold GET: {results.cold_moto_gets} (expected 1 each)")
    if results.crowd_moto_gets != 1:
        problems.append(f"{results.crowd_moto_gets} GETs at moto for {len(crowd)} concurrent "
                        "cold GETs (expected 1)")
    print_problems(problems, "problems seen", "no warnings or errors in filestore's log, one GET "
                   "at moto per miss, every body's SHA-256 right")

    def timings(items: Sequence[Timing]) -> list[dict[str, Any]]:
        return [dataclasses.asdict(t) for t in items]

    return {
        "config": {**args_json(args), **{k: v for k, v in info.items() if k != "problems"}},
        "cold": {
            "direct": {"ttfb_ms": d_ttfb, "total_ms": d_total, "runs": timings(results.direct)},
            "filestore": {"ttfb_ms": c_ttfb, "total_ms": c_total, "last_gap_ms": c_gap,
                          "moto_gets": results.cold_moto_gets, "runs": timings(results.cold)},
            "ttfb_ratio": c_ttfb / d_ttfb, "total_ratio": c_total / d_total,
            "ttfb_limit_ms": ttfb_limit, "ttfb_ok": ttfb_ok, "total_ok": total_ok,
            "cpu_ms": cpu_ms,
        },
        "concurrent": {
            "clients": len(crowd), "first_ttfb_ms": first.ttfb_ms,
            "ttfb_ratio_p50": med(ratios), "ttfb_ratio_max": max(ratios),
            "first_byte_spread_ms": max(arrivals) - min(arrivals),
            "moto_gets": results.crowd_moto_gets, "identical": identical, "ok": join_ok,
            "clients_detail": [dataclasses.asdict(c) for c in crowd],
        },
        "warm": {"cached_total_ms": w_cached, "local_total_ms": w_local, "ratio": w_ratio,
                 "ok": warm_ok, "cached": timings(results.cached),
                 "local": timings(results.local)},
        "setup": results.setup,
        "problems": problems,
    }


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.monotonic()
    loop_factory, loop_name = event_loop_factory()
    cold_source, local_source = work / "cold.bin", work / "local.bin"
    sha_cold = write_payload(cold_source, args.size)
    sha_local = write_payload(local_source, args.size)
    log(f"payloads: 2 x {size_text(args.size)} in {work}")

    moto = Moto(work)
    fs = Filestore(work / "data", moto.url, work / "filestore.log")
    results = Results()
    try:
        moto.start(POLL_SECONDS, PORT_TIMEOUT)
        moto.client.create_bucket(Bucket=BUCKET)
        make_cold(fs, moto, cold_source, args.size, args.timeout, results)
        measure(args, fs, moto, sha_cold, sha_local, local_source, loop_factory, results)
    finally:
        moto.stop()

    shown_env = fs.settings(0, "1h")
    shown_env["FILESTORE_SERVER__PORT"] = "<free port>"
    shown_env["FILESTORE_STORAGE__DATA_DIR"] = "<tmp>/data"
    info = {
        "versions": {"python": sys.version.split()[0],
                     **package_versions("filestore", "aioboto3", "aiobotocore", "botocore",
                                        "aiohttp", "moto", "uvicorn", "uvloop")},
        "cpus": nproc(),
        "moto_url": moto.url,
        "loop": loop_name,
        "client_config": CLIENT_CONFIG_TEXT,
        "filestore_env": shown_env,
        "problems": [f"filestore log: {line}"
                     for line in log_problems(fs.log_path, WARNING_MARKS)],
    }
    output = report(args, results, info)
    output["elapsed_s"] = time.monotonic() - started
    print(f"\n(whole benchmark: {output['elapsed_s']:.0f} s)")
    write_json(args.json, output, default=str)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench/miss.py", "filestore-bench-miss-", args.keep,
                    lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
