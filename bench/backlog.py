"""Backlog restart benchmark: how soon `filestore serve` is ready on a huge backlog, its peak
memory, and how fast the backlog then drains.

What is measured
    A data directory whose registry holds --files files (default 1,000,000; --quick 100,000),
    --pending of them (default 300,000; --quick 30,000) with an upload queued and due, the
    others in the cloud. It is built straight in the registry, "fast": filestore's own
    `SqliteRegistry` creates the schema (so the triggers are filestore's), then the rows go in
    with `executemany`, 100,000 to a transaction, and the triggers keep the counters:
    - uploaded files: location 'remote', recorded at the remote "default" (the embedded
      default, `data_dir/remote`) under the key that remote gives them, with an ETag and an
      upload time; their bytes exist nowhere (nothing reads them);
    - pending files: location 'local', one byte each in `files/<path>` (the upload needs them;
      the start must not read them), the row's size, SHA-256, MD5 and inode those of that
      byte, and a queue row (op 'upload', remote "default") whose cool-down is over;
    - then what filestore counts outside the triggers (`seq.version`, `uploads.*`), a check of
      the counters the stats show, and a WAL checkpoint, as a long-running store has it.
    Paths are `backlog/NNNN/NNNNNNN.bin`, 1,000 to a directory, the pending ones spread evenly.

    The tree lives in --dir (default /tmp/filestore-backlog) and is reused by the next run: its
    pristine registry is kept beside the data directory and copied back before each run, and
    the bytes the last drain moved into `cache/` are moved back into `files/` (a rename keeps
    their inode) and its `remote/` is emptied. `--rebuild` builds it anew; so does a tree of
    other sizes or of another schema version. With the defaults it takes about 2 GiB of disk
    (the 300,000 one-byte files take a block each, and the registry is there twice).

    Then `filestore serve --config FILE` (the embedded default: a config naming only the data
    directory, a free port, `upload.delay = "0s"` and no free-space reserves; one worker) is
    spawned, and measured:
    - ready: seconds from the spawn to the first `/readyz` 200, polled every 20 ms;
    - peak RSS: the largest sum of VmHWM over the server's processes (its process group,
      polled every 0.1 s; one process with one worker), until ready and over the whole run;
    - drain: uploads done per second, from `uploads.done` of `/admin/api/stats` (bearer token
      from `data_dir/token`), polled every 0.5 s: from the first sample showing an upload, for
      --drain seconds (default 20; --quick 10) or until the queue is empty;
    - CPU seconds the server used until ready, and when the first upload was recorded.
    The first stats answer must show the store built (files, pending uploads).

    Reference, in the same run: the same server on a small store of the same mix (--small
    files, default a twentieth of --files, with pending uploads in the same proportion), built
    fresh in a temp directory on the same filesystem as --dir. What grows with the registry
    shows in the ratios; its start-up is close to an empty registry's, and its queue is long
    enough to drain for the whole window at the rates seen here (15,000 uploads by default).
    Reported: each figure beside it, as a ratio.

    Targets (issue #18): ready <= 5 s and peak RSS < 200 MiB with 1M files and 300k pending.
    The registry is in the page cache (just copied or built): a warm restart.

Usage
    python bench/backlog.py [--quick] [--files 1m] [--pending 300k] [--small 50k]
                            [--drain 20] [--dir /tmp/filestore-backlog] [--rebuild]
                            [--json PATH] [--keep]

Stdlib and filestore only; the servers bind 127.0.0.1, each on a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    KIB,
    MIB,
    WARNING_MARKS,
    BenchError,
    Process,
    add_output_options,
    apply_profile,
    busy_problems,
    count_text,
    count_value,
    cpu_busy,
    cpu_seconds,
    filestore_command,
    filestore_env,
    free_port,
    git_revision,
    log,
    log_problems,
    mem_status,
    nproc,
    package_versions,
    print_problems,
    print_rows,
    ratio_text,
    run_main,
    verdict,
    versions_text,
    write_json,
)

import filestore
from filestore.auth import read_token
from filestore.datadir import DataDir
from filestore.registry import SCHEMA_VERSION, SqliteRegistry

TARGET_READY_S = 5.0
TARGET_RSS_MIB = 200.0
LAYOUT = 1  # the tree's design: a tree built by another version of this script is rebuilt
PER_DIR = 1000
CHUNK = 100_000  # rows per transaction while building
REMOTE = "default"
BODY = b"x"  # every pending file's bytes
CONTENT_TYPE = "application/octet-stream"
DAY = 86_400.0
READY_TIMEOUT = 120.0  # seconds to wait for /readyz (far past the target: still measured)
FIRST_UPLOAD_TIMEOUT = 60.0
READY_POLL = 0.02
STATS_POLL = 0.5
MEMORY_POLL = 0.1

QUICK = {"files": 100_000, "pending": 30_000, "drain": 10.0}
FULL = {"files": 1_000_000, "pending": 300_000, "drain": 20.0}


# -- arguments ------------------------------------------------------------------------------------


def parse_count(text: str) -> int:
    """`10`, `300k`, `1m`, `1,000`: a decimal count (k = 1,000, m = 1,000,000)."""
    count = count_value(text.replace(",", "").replace("_", ""))
    if count is None:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 10k, 300k, 1m)")
    return count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/backlog.py",
        description="Start-up time, peak RSS and drain rate of filestore serve on a registry "
                    "of 1M files with 300k uploads pending, vs a small store.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="100k files with 30k pending, a 10 s drain")
    parser.add_argument("--files", type=parse_count, default=None,
                        help="files in the large store (default 1m; --quick 100k)")
    parser.add_argument("--pending", type=parse_count, default=None,
                        help="of which with an upload pending (default 300k; --quick 30k)")
    parser.add_argument("--small", type=parse_count, default=None,
                        help="files in the reference store, same mix (default a twentieth of "
                             "--files: 50k, --quick 5k)")
    parser.add_argument("--drain", type=float, default=None, metavar="SECONDS",
                        help="how long the drain is measured (default 20; --quick 10)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/filestore-backlog"),
                        help="where the large store is kept between runs "
                             "(default /tmp/filestore-backlog)")
    parser.add_argument("--rebuild", action="store_true",
                        help="build the large store anew even if --dir holds one")
    add_output_options(parser, "the reference store, configs and server logs")
    args = parser.parse_args(argv)
    apply_profile(args, QUICK, FULL)
    if args.small is None:
        args.small = max(10, args.files // 20)
    if not 1 <= args.pending <= args.files or args.files >= 10**7:
        parser.error("need 1 <= --pending <= --files < 10,000,000")
    if not 10 <= args.small <= args.files:
        parser.error("need 10 <= --small <= --files")
    if args.drain <= 0:
        parser.error("--drain must be positive")
    return args


# -- the stores -----------------------------------------------------------------------------------


def file_path(i: int) -> str:
    return f"backlog/{i // PER_DIR:04d}/{i:07d}.bin"


def is_pending(i: int, files: int, pending: int) -> bool:
    """Exactly `pending` of `files`, spread evenly (where i * pending / files steps up)."""
    return (i * pending) // files != ((i + 1) * pending) // files


@dataclasses.dataclass
class Store:
    """A data directory of `files` files, `pending` of them with a queued upload."""

    name: str
    root: Path  # holds data/, the pristine registry and the manifest
    files: int
    pending: int
    built_seconds: float | None = None  # None: reused from an earlier run
    db_bytes: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def registry_path(self) -> Path:
        return DataDir(self.data_dir).registry_path

    @property
    def pristine(self) -> Path:
        return self.root / "registry.pristine.sqlite3"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, int]:
        return {"layout": LAYOUT, "schema": SCHEMA_VERSION, "files": self.files,
                "pending": self.pending}

    def summary(self) -> str:
        how = ("reused" if self.built_seconds is None
               else f"built in {self.built_seconds:.1f} s")
        return (f"{self.files:,} files, {self.files - self.pending:,} in the cloud, "
                f"{self.pending:,} local with an upload due; registry "
                f"{self.db_bytes / MIB:,.1f} MiB, {how}")


def write_body(target: Path) -> int:
    """The pending file's byte at `target`; its inode."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, BODY)
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def build(store: Store) -> None:
    """A fresh tree for `store` (see the module docstring)."""
    started = time.perf_counter()
    shutil.rmtree(store.root, ignore_errors=True)
    store.data_dir.mkdir(parents=True)
    local_root = store.data_dir / "files"
    remote_root = (store.data_dir / "remote").resolve()  # FileRemote.key_for's root
    sha256, md5 = hashlib.sha256(BODY).hexdigest(), hashlib.md5(BODY).hexdigest()
    now = time.time()
    first_created = now - 30 * DAY  # file i was written i seconds later: all long cooled down
    uploaded = uploaded_bytes = 0
    registry = SqliteRegistry(store.registry_path)
    try:
        registry.migrate()
        for chunk_start in range(0, store.files, CHUNK):
            files: list[tuple[Any, ...]] = []
            queue: list[tuple[Any, ...]] = []
            for i in range(chunk_start, min(chunk_start + CHUNK, store.files)):
                path, version, created = file_path(i), i + 1, first_created + i
                if i % PER_DIR == 0:
                    (local_root / path).parent.mkdir(parents=True, exist_ok=True)
                if is_pending(i, store.files, store.pending):
                    inode = write_body(local_root / path)
                    files.append((path, len(BODY), sha256, CONTENT_TYPE, created, created,
                                  "local", version, inode, None, None, None, None, md5))
                    queue.append((path, version, REMOTE, created + 600, created, created))
                    continue
                size = KIB << (i % 16)  # 1 KiB .. 32 MiB; the bytes exist nowhere
                sha = f"{i:064x}"
                files.append((path, size, sha, CONTENT_TYPE, created, created, "remote",
                              version, 0, REMOTE, str(remote_root / path), sha, created + 600,
                              f"{i:032x}"))
                uploaded += 1
                uploaded_bytes += size
            with registry.transaction() as tx:
                conn = tx._conn  # rows straight in: the triggers keep the counters
                conn.executemany(
                    "INSERT INTO files (path, size, sha256, content_type, created, modified, "
                    "location, version, inode, remote, remote_key, remote_etag, uploaded_at, "
                    "md5) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", files)
                conn.executemany(
                    "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, "
                    "created, updated) VALUES (?, 'upload', ?, ?, ?, 0, 'pending', ?, ?)", queue)
            log(f"{store.name}: {min(chunk_start + CHUNK, store.files):,} of "
                f"{store.files:,} files")
        with registry.transaction() as tx:
            # What filestore counts outside the triggers (FileRows.upsert, mark_uploaded).
            tx._conn.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                [("seq.version", store.files), ("uploads.done", uploaded),
                 ("uploads.bytes", uploaded_bytes), (f"uploads.done.{REMOTE}", uploaded),
                 (f"uploads.bytes.{REMOTE}", uploaded_bytes)])
        check_counters(registry, store, uploaded_bytes)
    finally:
        registry.close()
    with contextlib.closing(sqlite3.connect(store.registry_path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(store.registry_path, store.pristine)
    store.manifest_path.write_text(json.dumps(store.manifest()) + "\n")
    store.built_seconds = time.perf_counter() - started


def check_counters(registry: SqliteRegistry, store: Store, uploaded_bytes: int) -> None:
    """The counters the stats show are those of the store designed."""
    counters = registry.read.counters.all()
    remote = store.files - store.pending
    expected = {"files": store.files, "files.local": store.pending, "files.remote": remote,
                f"files.remote.{REMOTE}": remote, "bytes.remote": uploaded_bytes,
                "bytes.local": store.pending * len(BODY),
                "queue.upload.pending": store.pending, "queue.upload.failed": 0,
                "unprotected.bytes": store.pending * len(BODY), "uploads.done": remote}
    off = {name: (counters.get(name), value) for name, value in expected.items()
           if counters.get(name) != value}
    if off:
        raise BenchError(f"{store.name}: counters (counter, expected): {off}")


def prepare(store: Store, rebuild: bool) -> None:
    """Build the tree, or bring the one an earlier run left back to its pristine state."""
    try:
        found = json.loads(store.manifest_path.read_text())
    except (OSError, ValueError):
        found = None
    if rebuild or found != store.manifest() or not store.pristine.is_file():
        why = ("--rebuild" if rebuild else "none found" if found is None
               else f"the one found is {found}")
        log(f"{store.name}: building {store.files:,} files in {store.root} ({why})")
        build(store)
    else:
        restore(store)
    store.db_bytes = store.registry_path.stat().st_size


def restore(store: Store) -> None:
    """Undo what the last run's server did (see the module docstring)."""
    started = time.perf_counter()
    data = store.data_dir
    cache, files = data / "cache", data / "files"
    moved = 0
    for directory, _, names in os.walk(cache):
        for name in names:
            source = Path(directory, name)
            target = files / source.relative_to(cache)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            moved += 1
    for leftover in (cache, data / "remote", data / "tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.registry_path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(store.pristine, store.registry_path)
    with open(store.registry_path, "rb") as copy:
        os.fsync(copy.fileno())  # no writeback of it during the measured start
    present = sum(len(names) for _, _, names in os.walk(files))
    if present != store.pending:
        raise BenchError(f"{store.name}: {present:,} files in {files}, expected "
                         f"{store.pending:,}: run with --rebuild")
    log(f"{store.name}: reused {store.root} ({moved:,} bytes moved back from cache/) in "
        f"{time.perf_counter() - started:.1f} s")


# -- the server -----------------------------------------------------------------------------------


def group_pids(leader: int) -> list[int]:
    """The processes of the process group `leader` leads (the server and any workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # After the command name (in parentheses, may hold spaces): state, ppid, pgrp.
        if int(stat[stat.rindex(")") + 2:].split()[2]) == leader:
            found.append(int(entry))
    return found


class MemoryWatch:
    """Polls the VmHWM (and VmRSS) of a process group in a thread; the largest sums seen."""

    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.peak_hwm_kib = 0
        self.peak_rss_kib = 0
        self.processes = 0  # the most processes seen at once
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory watch", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def sample(self, pids: list[int]) -> None:
        statuses = [s for s in map(mem_status, pids) if s is not None]
        if statuses:
            self.peak_hwm_kib = max(self.peak_hwm_kib, sum(s.hwm_kib for s in statuses))
            self.peak_rss_kib = max(self.peak_rss_kib, sum(s.rss_kib for s in statuses))
            self.processes = max(self.processes, len(statuses))

    def _run(self) -> None:
        pids, listed = [self.leader], 0.0
        while not self._done.is_set():
            if time.monotonic() - listed > 1.0:  # workers come and go rarely
                pids, listed = group_pids(self.leader) or [self.leader], time.monotonic()
            self.sample(pids)
            self._done.wait(MEMORY_POLL)


def get(port: int, path: str, token: str | None = None,
        timeout: float = 5.0) -> tuple[int, bytes] | None:
    """One GET on a fresh connection; None if the server does not accept it (yet)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def write_config(path: Path, data_dir: Path, port: int) -> None:
    """The embedded default with the data directory, the port and no wait or reserve."""
    path.write_text(
        "[server]\n"
        f'host = "{HOST}"\n'
        f"port = {port}\n"
        "workers = 1\n\n"
        "[storage]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n"
        'min_free = "0"\n\n'
        "[upload]\n"
        'delay = "0s"\n\n'
        "[cache]\n"
        'min_free = "0"\n'
    )


@dataclasses.dataclass
class Run:
    """What one server run measured."""

    ready_s: float = 0.0  # spawn to the first /readyz 200
    port_s: float | None = None  # spawn to the first answer of any kind
    ready_cpu_s: float = 0.0  # CPU the server had used by then
    ready_rss_mib: float = 0.0  # peak RSS (sum of VmHWM) until ready
    peak_rss_mib: float = 0.0  # ... over the whole run
    processes: int = 0
    first_upload_s: float | None = None  # spawn to the first upload recorded
    drained: int = 0  # uploads in the measured window
    drain_s: float = 0.0  # the window
    left: int = 0  # pending uploads at its end
    failed: int = 0  # failed uploads at its end
    log_problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def drain_rate(self) -> float:
        return self.drained / self.drain_s if self.drain_s > 0 else 0.0


def stats_of(port: int, token: str) -> dict[str, Any]:
    answer = get(port, "/admin/api/stats", token, timeout=10.0)
    if answer is None or answer[0] != 200:
        raise BenchError(f"GET /admin/api/stats -> {answer and answer[0]}: "
                         f"{answer and answer[1][:300]!r}")
    return dict(json.loads(answer[1]))


def measure(store: Store, work: Path, drain_s: float) -> Run:
    """Start `filestore serve` on the store and measure it (see the module docstring)."""
    port = free_port()
    config = work / f"{store.name}.toml"
    write_config(config, store.data_dir, port)
    server = Process(f"filestore ({store.name})",
                     [*filestore_command(), "serve", "--config", str(config)],
                     work / f"filestore-{store.name}.log", filestore_env({}), log_command=True)
    run = Run()
    server.start()
    try:
        with MemoryWatch(server.pid) as memory:
            deadline = server.started_at + READY_TIMEOUT
            while True:
                answer = get(port, "/readyz", timeout=3.0)
                if answer is not None and run.port_s is None:
                    run.port_s = time.monotonic() - server.started_at
                if answer is not None and answer[0] == 200:
                    run.ready_s = time.monotonic() - server.started_at
                    break
                server.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"{server.name}: no /readyz 200 within "
                                     f"{READY_TIMEOUT:.0f} s:\n{server.log_tail()}")
                time.sleep(READY_POLL)
            run.ready_cpu_s = cpu_seconds(server.pid)
            memory.sample(group_pids(server.pid))
            run.ready_rss_mib = memory.peak_hwm_kib / KIB
            log(f"{server.name}: ready in {run.ready_s:.2f} s ({run.ready_cpu_s:.2f} CPU s), "
                f"peak RSS {run.ready_rss_mib:.1f} MiB")
            drain(store, server, port, drain_s, run)
            memory.sample(group_pids(server.pid))
            run.peak_rss_mib, run.processes = memory.peak_hwm_kib / KIB, memory.processes
    finally:
        status = server.stop()
        log(f"{server.name}: stopped (exit status {status})")
    run.log_problems = log_problems(server.log_path, WARNING_MARKS)
    return run


def drain(store: Store, server: Process, port: int, seconds: float, run: Run) -> None:
    """Follow the uploads for `seconds` from the first one (or until none is left)."""
    token = read_token(DataDir(store.data_dir).token_path)
    if not token:
        raise BenchError(f"{server.name}: no token in {store.data_dir}")
    stats = stats_of(port, token)
    got = (stats["files"]["count"], stats["queue"]["upload"]["pending"]
           + stats["uploads"]["done"] - (store.files - store.pending))
    if got != (store.files, store.pending):
        raise BenchError(f"{server.name}: the stats show (files, uploads queued or done since "
                         f"the start) {got}, expected {(store.files, store.pending)}")
    done0 = store.files - store.pending  # uploads.done as built
    start: tuple[float, int] | None = None
    while True:
        server.check_alive()
        now = time.monotonic()
        stats = stats_of(port, token)
        done, upload = stats["uploads"]["done"], stats["queue"]["upload"]
        if start is None and done > done0:
            start = (now, done)
            run.first_upload_s = now - server.started_at
            log(f"{server.name}: first upload at {run.first_upload_s:.2f} s; following the "
                f"drain for {seconds:g} s")
        if start is None and now - server.started_at > FIRST_UPLOAD_TIMEOUT:
            raise BenchError(f"{server.name}: no upload within {FIRST_UPLOAD_TIMEOUT:.0f} s "
                             f"of the start:\n{server.log_tail()}")
        if start is not None and (now - start[0] >= seconds or upload["pending"] == 0):
            run.drained, run.drain_s = done - start[1], now - start[0]
            run.left, run.failed = upload["pending"], upload["failed"]
            return
        time.sleep(STATS_POLL)


# -- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
            "cpus": str(nproc()), "git": git_revision() or "?",
            "filestore from": str(Path(filestore.__file__).parent.parent),
            **package_versions("starlette", "uvicorn", "uvloop")}


def print_report(large: Store, small: Store, big: Run, ref: Run) -> dict[str, bool]:
    b = f"{count_text(large.files)} / {count_text(large.pending)} pending"
    s = f"{count_text(small.files)} / {count_text(small.pending)} pending"
    ready_ok = big.ready_s <= TARGET_READY_S
    rss_ok = big.peak_rss_mib < TARGET_RSS_MIB

    def opt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    rows = [["figure", b, s, "ratio", "target", "result"],
            ["/readyz 200 after the spawn, s", f"{big.ready_s:.2f}", f"{ref.ready_s:.2f}",
             ratio_text(big.ready_s, ref.ready_s), f"<= {TARGET_READY_S:g} s",
             verdict(ready_ok)],
            ["  port answering after, s", opt(big.port_s), opt(ref.port_s),
             ratio_text(big.port_s or 0, ref.port_s or 0), "", ""],
            ["  server CPU until ready, s", f"{big.ready_cpu_s:.2f}", f"{ref.ready_cpu_s:.2f}",
             ratio_text(big.ready_cpu_s, ref.ready_cpu_s), "", ""],
            ["peak RSS until ready, MiB", f"{big.ready_rss_mib:.1f}", f"{ref.ready_rss_mib:.1f}",
             ratio_text(big.ready_rss_mib, ref.ready_rss_mib), "", ""],
            ["peak RSS, start + drain, MiB", f"{big.peak_rss_mib:.1f}", f"{ref.peak_rss_mib:.1f}",
             ratio_text(big.peak_rss_mib, ref.peak_rss_mib), f"< {TARGET_RSS_MIB:g} MiB",
             verdict(rss_ok)],
            ["first upload after the spawn, s", opt(big.first_upload_s), opt(ref.first_upload_s),
             ratio_text(big.first_upload_s or 0, ref.first_upload_s or 0), "", ""],
            ["drain, uploads/s", f"{big.drain_rate:,.1f}", f"{ref.drain_rate:,.1f}",
             ratio_text(big.drain_rate, ref.drain_rate), "", ""]]
    print_rows(rows, right_align=True)
    print()
    for name, r in (("large", big), ("reference", ref)):
        print(f"{name}: {r.drained:,} uploads in {r.drain_s:.1f} s; {r.left:,} pending and "
              f"{r.failed:,} failed after; {r.processes} server process(es)")
    print(f"targets: /readyz within {TARGET_READY_S:g} s: {verdict(ready_ok)}; peak RSS under "
          f"{TARGET_RSS_MIB:g} MiB: {verdict(rss_ok)}")
    return {"ready": ready_ok, "rss": rss_ok}


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.perf_counter()
    found = versions()
    print(f"Backlog restart benchmark{' (--quick)' if args.quick else ''}: "
          + versions_text(found))
    large = Store("large", args.dir, args.files, args.pending)
    small = Store("reference", work / "reference", args.small,
                  max(1, round(args.small * args.pending / args.files)))
    prepare(large, args.rebuild)
    log(f"large: {large.summary()}")
    build(small)
    small.db_bytes = small.registry_path.stat().st_size
    log(f"reference: {small.summary()}")
    busy_before = cpu_busy()
    ref = measure(small, work, args.drain)
    big = measure(large, work, args.drain)
    busy_after = cpu_busy()

    print()
    print(f"large store: {large.summary()}")
    print(f"reference store: {small.summary()}")
    print(f"each: `filestore serve --config FILE` (1 worker, upload.delay 0s, upload.concurrency "
          f"4), drain followed {args.drain:g} s from the first upload")
    print()
    met = print_report(large, small, big, ref)
    problems = busy_problems(busy_before, busy_after, "absolute figures")
    problems += [f"large server log: {line}" for line in big.log_problems[:10]]
    problems += [f"reference server log: {line}" for line in ref.log_problems[:10]]
    problems += [f"{name}: {r.failed:,} uploads failed" for name, r in
                 (("large", big), ("reference", ref)) if r.failed]
    print_problems(problems)
    print()
    print(f"total {time.perf_counter() - started:.1f} s")
    write_json(args.json, {
        "versions": found,
        "settings": {"files": args.files, "pending": args.pending, "small": args.small,
                     "drain_s": args.drain, "quick": args.quick, "dir": str(args.dir)},
        "stores": {s.name: {"files": s.files, "pending": s.pending, "db_bytes": s.db_bytes,
                            "built_seconds": s.built_seconds} for s in (large, small)},
        "large": {**dataclasses.asdict(big), "drain_rate": big.drain_rate},
        "reference": {**dataclasses.asdict(ref), "drain_rate": ref.drain_rate},
        "targets": {"ready_s": TARGET_READY_S, "peak_rss_mib": TARGET_RSS_MIB},
        "met": met, "cpu_busy_before": busy_before, "cpu_busy_after": busy_after,
        "problems": problems,
    })
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench/backlog.py", "filestore-backlog-", args.keep,
                    lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
