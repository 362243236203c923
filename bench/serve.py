"""Serving benchmark: filestore GET throughput against nginx, bare Starlette and a do-nothing
ASGI app, and PUT memory.

What is measured
    GET throughput of the same bytes (random files of each --sizes size, default 1 KiB, 64 KiB,
    1 MiB, 32 MiB) from four servers on 127.0.0.1, all running at once and measured in turns:

    1. nginx (one worker per core, sendfile, tcp_nopush, open_file_cache, no access log) with
       `root` = filestore's own `data_dir/files/`: the physical limit of this machine;
    2. a bare Starlette `FileResponse` app under uvicorn (uvloop, httptools, no access log, same
       worker count): what a straightforward Python server reaches;
    3. a do-nothing ASGI app ("asgi") answering each file's bytes from memory under exactly the
       server filestore runs under (uvicorn with `filestore.serving`'s options: uvloop, the
       `filestore.httpguard:GuardedHttpToolsProtocol` protocol, no access log; same workers):
       the server's own cost per request, so filestore / asgi is what filestore's code costs;
    4. `filestore serve --workers N`: the product, including its registry lookup, validators and
       headers on every request.

    Each figure comes from `wrk -t2 -c32 -dDURATION URL` (`-c4` for 32 MiB), after an unrecorded
    warm-up run, as the median over --runs runs; for each size, run 1 of every server is taken,
    then run 2, and so on, so the figures a ratio compares are minutes apart at most. MB/s is
    payload only (req/s x file size, 10^6 bytes/s). Non-2xx responses (wrk counts status >= 400)
    and socket errors are counted as errors.
    Before measuring, every URL is fetched once and must return 200 and exactly the file's bytes.

    Streaming PUT memory: a body of --put-size bytes (default 1 GiB), generated on the fly from
    os.urandom blocks and never held in memory, is PUT to filestore; the report is the peak RSS
    growth of the uvicorn worker processes (VmHWM after the PUT minus VmRSS before it, with the
    high-water mark reset through /proc/<pid>/clear_refs first). A streaming server stays flat.

Why
    Ratios against nginx, Starlette and the do-nothing app on the same machine are what can be
    compared across machines; absolute figures cannot. wrk shares the CPUs with the server
    under test, so absolute req/s understate every server alike. The small files measure
    per-request overhead, the 32 MiB file measures how fast the body is moved.

Usage
    python bench/serve.py [--duration 5s] [--runs 1] [--sizes 1k,64k,1m,32m] [--workers 2]
                          [--warmup 2s] [--put-size 1GiB] [--json PATH] [--keep]

Needs nginx and wrk on PATH (Debian: `apt-get install nginx wrk`); exits 2 without them.
Everything binds 127.0.0.1, each server on a free port found by binding port 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from benchlib import (
    ERROR_MARKS,
    GIB,
    HOST,
    KIB,
    MIB,
    BenchError,
    MemStatus,
    Process,
    add_output_options,
    busy_problems,
    cpu_busy,
    filestore_command,
    filestore_env,
    filestore_settings,
    filestore_token,
    find_tools,
    free_port,
    git_revision,
    http_request,
    log,
    log_problems,
    mem_status,
    nproc,
    package_versions,
    parse_size,
    port_open,
    print_problems,
    print_rows,
    random_blocks,
    ratio_text,
    run_main,
    versions_text,
    write_json,
)

PUT_PATH = "bench-put.bin"
PUT_RSS_TARGET_MIB = 64
STOP_TIMEOUT = 15.0
# Log lines that point at a problem: errors, tracebacks, and crash recovery (every server here is
# stopped cleanly, so the next start has nothing to recover).
LOG_MARKS = (*ERROR_MARKS, "recovery:")
# Files of this size or more are measured with few connections (as in the reference anchors).
LARGE_FILE = 32 * MIB
# Targets for --workers 2 (for context; printed, never enforced).
TARGET_1K_RPS_RATIO = 0.25
TARGET_32M_MBPS_RATIO = 0.8
# filestore against the do-nothing ASGI app under the same server (issue #17): what filestore's
# own code costs per request, by size label.
TARGET_ASGI_RATIOS = {"1k": 0.7, "64k": 0.6}

_DURATION_RE = re.compile(r"^(\d+)([smh]?)$")

WRK_REPORT_LUA = """\
-- One machine-readable line per run; errors = socket errors + responses with status >= 400.
done = function(summary, latency, requests)
  local d = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d bytes=%d duration_s=%.3f rps=%.2f errors=%d status_err=%d "
    .. "p50_ms=%.3f p99_ms=%.3f\\n",
    summary.requests, summary.bytes, d, summary.requests / d,
    e.connect + e.read + e.write + e.status + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

STARLETTE_APP = '''\
"""Bare Starlette FileResponse server: the Python baseline of bench/serve.py."""
import os

from starlette.applications import Starlette
from starlette.responses import FileResponse, PlainTextResponse
from starlette.routing import Route

ROOT = os.environ["BENCH_ROOT"]


async def serve(request):
    path = os.path.join(ROOT, os.path.basename(request.path_params["name"]))
    if not os.path.isfile(path):
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path)


app = Starlette(routes=[Route("/{name}", serve)])
'''

ASGI_APP = '''\
"""A do-nothing ASGI app: the reference of bench/serve.py for filestore's own Python path.

It answers `/<label>.bin` with that file's bytes, read into memory once at start, and does
nothing else: no routing, no lookup, no file. It runs under the very server filestore runs under
(uvicorn with filestore.serving's options: uvloop and `filestore.httpguard`'s protocol) with the
same workers, so filestore / this app is what filestore's own code costs per request.
"""
import os
import sys

ROOT = os.environ["BENCH_ROOT"]
BODIES = {}
for name in os.listdir(ROOT):
    with open(os.path.join(ROOT, name), "rb") as f:
        BODIES["/" + name] = f.read()
HEADS = {path: [(b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode())] for path, body in BODIES.items()}
NOT_FOUND = [(b"content-type", b"text/plain"), (b"content-length", b"10")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = BODIES.get(scope["path"])
    if body is None:
        await send({"type": "http.response.start", "status": 404, "headers": NOT_FOUND})
        await send({"type": "http.response.body", "body": b"not found\\n"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADS[scope["path"]]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    import uvicorn
    from filestore.serving import _OPTIONS

    host, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    options = {**_OPTIONS, "factory": False}
    uvicorn.run("bench_asgi_app:app", host=host, port=port, workers=workers, **options)
'''

# The reference server block; `http` and `after` are more of the http block before and after it
# (bench/accel.py adds its access log and the shipped server block).
NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
{http}\
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen {host}:{port};
    access_log off;
    open_file_cache max=1000 inactive=60s;
    root {root};
    location / {{ }}
  }}
{after}\
}}
"""


# -- arguments --------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """Whole seconds, as wrk takes them: `5`, `5s`, `2m`, `1h`."""
    match = _DURATION_RE.match(text.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"not a duration of 1s or more: {text!r} (e.g. 5s, 1m)")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """`1k,64k,1m,32m` -> [("1k", 1024), ...]; the label names the file (`1k.bin`)."""
    labels = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("--sizes needs at least one size")
    sizes = [(label, parse_size(label)) for label in labels]
    if any(size < 1 for _, size in sizes):
        raise argparse.ArgumentTypeError("every size must be at least 1 byte")
    if len({label for label, _ in sizes}) != len(sizes):
        raise argparse.ArgumentTypeError("--sizes lists a size twice")
    return sizes


def add_wrk_options(parser: argparse.ArgumentParser, sizes: str, workers_of: str) -> None:
    """The options of a GET benchmark: wrk's --duration, --warmup and --runs, the test files'
    --sizes (default `sizes`) and the --workers of `workers_of`."""
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("5s"),
                        help="wrk duration per measured run (default 5s)")
    parser.add_argument("--warmup", type=parse_duration, default=parse_duration("2s"),
                        help="unrecorded wrk run before each target/size (default 2s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measured runs per target/size; the median is reported (default 1)")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(sizes),
                        help=f"comma-separated file sizes (default {sizes})")
    parser.add_argument("--workers", type=int, default=2,
                        help=f"worker processes of {workers_of} (default 2)")


def check_wrk_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be from 1 to 64")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/serve.py",
        description="GET throughput of filestore vs nginx vs bare Starlette, and PUT memory.",
    )
    add_wrk_options(parser, "1k,64k,1m,32m", "the uvicorn servers")
    parser.add_argument("--put-size", type=parse_size, default=GIB,
                        help="size of the streamed PUT for the memory check; 0 skips it "
                             "(default 1GiB)")
    add_output_options(parser, "data, configs, server logs")
    args = parser.parse_args(argv)
    check_wrk_options(parser, args)
    return args


# -- processes --------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<n>/stat (field 4 is the parent pid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def uvicorn_workers(pid: int, workers: int) -> list[int]:
    """The processes that serve requests: uvicorn runs in-process with one worker, else it
    spawns workers through multiprocessing (other children, e.g. the resource tracker, are not)."""
    if workers == 1:
        return [pid]
    return [child for child in children_of(pid) if "spawn_main" in cmdline(child)]


@dataclasses.dataclass(kw_only=True)
class Server(Process):
    """A server `Process` listening on `port`; under uvicorn, with `workers` worker processes."""

    port: int
    workers: int
    uvicorn: bool = True  # wait for its `workers` worker processes before measuring

    def start(self) -> None:
        super().start()
        log(f"{self.name}: started pid {self.pid} on port {self.port}")

    def wait_ready(self) -> None:
        """Until the port accepts connections and (uvicorn) all worker processes exist."""
        expected_workers = self.workers if self.uvicorn and self.workers > 1 else 0

        def ready() -> bool:
            if not port_open(self.port):
                return False
            return not expected_workers or len(self.worker_pids()) >= expected_workers

        self.wait_for(ready, "get ready")

    def worker_pids(self) -> list[int]:
        return uvicorn_workers(self.pid, self.workers)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """As `Process.stop`, and log the exit status."""
        if self.proc is None:
            return None
        status = super().stop(timeout)
        log(f"{self.name}: stopped (exit status {status})")
        return status


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def nginx_server(nginx: str, prefix: Path, log_path: Path, port: int, root: Path,
                 http: str = "", after: str = "") -> Server:
    """nginx (one worker per core) with NGINX_CONF in `prefix`: its server block listens on
    `port` of HOST and serves `root`; `http` and `after` go into the http block before and
    after it."""
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "", workers=nproc(),
        prefix=prefix, host=HOST, port=port, root=root, http=http, after=after))
    return Server("nginx", [nginx, "-p", str(prefix), "-e", str(prefix / "logs/error.log"),
                            "-c", str(conf)], log_path,
                  port=port, workers=nproc(), uvicorn=False)


# -- HTTP check -----------------------------------------------------------------------------------


def check_get(port: int, path: str, expected: bytes, name: str) -> None:
    status, body = http_request(port, "GET", path)
    if status != 200 or len(body) != len(expected):
        raise BenchError(f"{name}: GET {path} -> {status}, {len(body)} bytes "
                         f"(expected 200, {len(expected)} bytes)")
    if hashlib.sha256(body).digest() != hashlib.sha256(expected).digest():
        raise BenchError(f"{name}: GET {path} returned other bytes than the file")


# -- wrk ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WrkRun:
    requests: int
    rps: float
    errors: int
    status_errors: int
    p50_ms: float
    p99_ms: float


@dataclasses.dataclass
class Measurement:
    target: str
    size_label: str
    size: int
    command: str
    runs: list[WrkRun]

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    @property
    def mbps(self) -> float:
        return self.rps * self.size / 1e6

    @property
    def p50_ms(self) -> float:
        return statistics.median(run.p50_ms for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "size": self.size_label, "bytes": self.size,
            "command": self.command, "rps": self.rps, "mbps": self.mbps,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors,
            "runs": [dataclasses.asdict(run) for run in self.runs],
        }


def wrk_argv(url: str, size: int, duration: int, script: Path | None = None) -> list[str]:
    """`wrk -t2 -c32 -dNs [-s script] URL` (`-c4` for large files)."""
    conns = 4 if size >= LARGE_FILE else 32
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(argv: list[str], duration: int, wrk: str) -> WrkRun | None:
    """One wrk run (`wrk` is its executable); None for a warm-up (no report script)."""
    result = subprocess.run([wrk, *argv[1:]], capture_output=True, text=True, timeout=duration + 60,
                            check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    if "-s" not in argv:
        return None
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise BenchError(f"no RESULT line from {' '.join(argv)}:\n{result.stdout}")
    values = dict(item.split("=", 1) for item in line.split()[1:])
    return WrkRun(
        requests=int(values["requests"]), rps=float(values["rps"]),
        errors=int(values["errors"]), status_errors=int(values["status_err"]),
        p50_ms=float(values["p50_ms"]), p99_ms=float(values["p99_ms"]),
    )


def measure_interleaved(
    urls: dict[str, tuple[int, str]], label: str, data: bytes, args: argparse.Namespace,
    lua: Path,
) -> dict[str, Measurement]:
    """Each target's runs (`urls`: target -> port, URL path), after a check of its GET and a
    warm-up run of each, taken in turns (run 1 of every target, then run 2, ...): on a machine
    shared with other work, a ratio then compares figures taken in the same minute."""
    argvs = {}
    for target, (port, url_path) in urls.items():
        check_get(port, url_path, data, target)
        url = f"http://{HOST}:{port}{url_path}"
        run_wrk(wrk_argv(url, len(data), args.warmup), args.warmup, args.wrk)
        argvs[target] = wrk_argv(url, len(data), args.duration, lua)
    runs: dict[str, list[WrkRun]] = {target: [] for target in urls}
    for i in range(args.runs):
        for target, argv in argvs.items():
            run = run_wrk(argv, args.duration, args.wrk)
            assert run is not None
            runs[target].append(run)
            log(f"{target} {label} run {i + 1}/{args.runs}: {run.rps:,.0f} req/s, "
                f"{run.rps * len(data) / 1e6:,.1f} MB/s, p50 {run.p50_ms:.2f} ms, "
                f"p99 {run.p99_ms:.2f} ms, errors {run.errors}")
    return {
        target: Measurement(target, label, len(data), " ".join(
            wrk_argv(f"http://{HOST}:{port}{url_path}", len(data), args.duration,
                     Path(lua.name))), runs[target])
        for target, (port, url_path) in urls.items()
    }


def measure(
    target: str, port: int, url_path: str, label: str, data: bytes,
    args: argparse.Namespace, lua: Path,
) -> Measurement:
    return measure_interleaved({target: (port, url_path)}, label, data, args, lua)[target]


# -- streaming PUT memory -------------------------------------------------------------------------


def worker_mem(pid: int) -> MemStatus:
    status = mem_status(pid)
    if status is None:
        raise BenchError(f"filestore worker {pid} is gone")
    return status


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclasses.dataclass
class PutResult:
    size: int
    seconds: float
    status: int
    growth_mib: float
    hwm_reset: bool
    workers: dict[int, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def random_body(total: int, digest: Digest) -> Iterator[bytes]:
    """`total` random bytes in 1 MiB blocks, made as they are sent; hashed for the check."""
    for block in random_blocks(total):
        digest.update(block)
        yield block


def measure_put_memory(server: Server, token: str, size: int) -> PutResult:
    pids = server.worker_pids()
    if not pids:
        raise BenchError("found no filestore worker processes to watch")
    hwm_reset = all(reset_hwm(pid) for pid in pids)
    before = {pid: worker_mem(pid) for pid in pids}
    digest = hashlib.sha256()
    headers = {"authorization": f"Bearer {token}", "content-length": str(size),
               "content-type": "application/octet-stream"}
    started = time.monotonic()
    status, reply = http_request(server.port, "PUT", f"/files/{PUT_PATH}",
                                 body=random_body(size, digest), headers=headers, timeout=600)
    seconds = time.monotonic() - started
    after = {pid: worker_mem(pid) for pid in pids}
    if status not in (200, 201):
        raise BenchError(f"filestore: PUT of {size} bytes -> {status}: {reply[:300]!r}")
    answer = json.loads(reply)
    if answer.get("size") != size or answer.get("sha256") != digest.hexdigest():
        raise BenchError(f"filestore: PUT stored something else: {answer} "
                         f"(sent {size} bytes, sha256 {digest.hexdigest()})")
    workers: dict[int, dict[str, float]] = {}
    for pid in pids:
        # Without a reset the old high-water mark is the baseline (growth may then be hidden).
        baseline = before[pid].rss_kib if hwm_reset else before[pid].hwm_kib
        workers[pid] = {
            "rss_before_mib": before[pid].rss_kib / KIB,
            "hwm_after_mib": after[pid].hwm_kib / KIB,
            "rss_after_mib": after[pid].rss_kib / KIB,
            "growth_mib": max(0, after[pid].hwm_kib - baseline) / KIB,
        }
    status_delete, _ = http_request(server.port, "DELETE", f"/files/{PUT_PATH}",
                                    headers={"authorization": f"Bearer {token}"})
    if status_delete != 204:
        log(f"filestore: DELETE /files/{PUT_PATH} -> {status_delete}")
    growth = max(worker["growth_mib"] for worker in workers.values())
    return PutResult(size, seconds, status, growth, hwm_reset, workers)


# -- report -------------------------------------------------------------------------------------

TARGETS = ("nginx", "starlette", "asgi", "filestore")


def print_tables(results: dict[tuple[str, str], Measurement], sizes: list[tuple[str, int]],
                 targets: Sequence[str], ratios: dict[str, Callable[[str], str]]) -> None:
    """The throughput table (req/s and MB/s of each target, then a column for each of `ratios`:
    heading -> the cell of a size label) and the latency table."""
    head = ["size"]
    for target in targets:
        head += [f"{target} req/s", f"{target} MB/s"]
    rows = [head + list(ratios)]
    for label, _ in sizes:
        row = [label]
        for target in targets:
            m = results[target, label]
            row += [f"{m.rps:,.0f}", f"{m.mbps:,.1f}"]
        rows.append(row + [cell(label) for cell in ratios.values()])
    print_rows(rows, right_align=True)
    print()
    rows = [["size"] + [f"{t} p50/p99 ms" for t in targets] + [f"{t} errors" for t in targets]]
    for label, _ in sizes:
        ms = [results[t, label] for t in targets]
        rows.append([label, *(f"{m.p50_ms:.2f} / {m.p99_ms:.2f}" for m in ms),
                     *(str(m.errors) for m in ms)])
    print_rows(rows, right_align=True)


def print_table(results: dict[tuple[str, str], Measurement], sizes: list[tuple[str, int]],
                workers: int) -> None:
    def vs(other: str) -> Callable[[str], str]:
        return lambda label: ratio_text(results["filestore", label].rps,
                                        results[other, label].rps)

    print_tables(results, sizes, TARGETS,
                 {"fs/nginx": vs("nginx"), "fs/starlette": vs("starlette"),
                  "fs/asgi": vs("asgi")})
    labels = {label for label, _ in sizes}
    notes = []
    if "1k" in labels:
        ratio = results["filestore", "1k"].rps / results["nginx", "1k"].rps
        notes.append(f"1k req/s filestore/nginx {ratio:.2f}x "
                     f"(target >= {TARGET_1K_RPS_RATIO}x with 2 workers)")
    if "32m" in labels:
        ratio = results["filestore", "32m"].mbps / results["nginx", "32m"].mbps
        notes.append(f"32m MB/s filestore/nginx {ratio:.2f}x "
                     f"(target >= {TARGET_32M_MBPS_RATIO}x with 2 workers)")
    for label, goal in TARGET_ASGI_RATIOS.items():
        if label in labels:
            ratio = results["filestore", label].rps / results["asgi", label].rps
            notes.append(f"{label} req/s filestore/do-nothing ASGI app {ratio:.2f}x "
                         f"(target >= {goal}x)")
    if notes:
        print()
        print(f"targets (this run: {workers} worker(s)):")
        for note in notes:
            print(f"  {note}")


def tool_versions(nginx_path: str, wrk_path: str) -> dict[str, str]:
    """nginx's and wrk's versions, as their `-v` prints them (bench/cluster.py's too)."""
    nginx = subprocess.run([nginx_path, "-v"], capture_output=True, text=True, check=False)
    wrk = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)
    return {"nginx": (nginx.stderr or nginx.stdout).strip().removeprefix("nginx version: "),
            "wrk": (wrk.stdout.splitlines() or ["?"])[0].split(" [")[0].removeprefix("wrk ")}


def versions(nginx_path: str, wrk_path: str) -> dict[str, str]:
    found = {"python": sys.version.split()[0], "cpus": str(nproc()),
             **tool_versions(nginx_path, wrk_path)}
    found.update(package_versions("filestore", "starlette", "uvicorn", "uvloop", "httptools"))
    revision = git_revision()
    if revision is not None:
        found["git"] = revision
    return found


def print_commands(results: dict[tuple[str, str], Measurement], sizes: list[tuple[str, int]],
                   targets: Sequence[str], reporter: str) -> None:
    """The wrk command of every measurement (`reporter` says where report.lua comes from)."""
    print(f"wrk commands (report.lua: {reporter}):")
    width = max(len(target) for target in targets)
    for target in targets:
        for label, _ in sizes:
            print(f"  {target:<{width}} {results[target, label].command}")


def finish(args: argparse.Namespace, found_versions: dict[str, str], settings: dict[str, Any],
           results: dict[tuple[str, str], Measurement], busy_before: float, problems: list[str],
           extra: dict[str, Any] | None = None) -> int:
    """The end of a GET benchmark's run: how busy the CPUs were after it, the problems (those
    of the run, the CPUs' and the wrk errors), the JSON file (`extra` after the results)."""
    busy_after = cpu_busy()
    problems += busy_problems(busy_before, busy_after)
    errors = sum(m.errors for m in results.values())
    if errors:
        problems.append(f"{errors} wrk errors (socket errors or status >= 400); see table")
    print_problems(problems)
    write_json(args.json, {
        "versions": found_versions,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "runs": args.runs,
                     "workers": args.workers, **settings},
        "results": [m.as_dict() for m in results.values()],
        **(extra or {}),
        "cpu_busy_before": busy_before,
        "cpu_busy_after": busy_after,
        "problems": problems,
    })
    return 0


# -- main -----------------------------------------------------------------------------------------


def serve_env(data_dir: Path, port: int) -> dict[str, str]:
    return filestore_env({**filestore_settings(data_dir, port), "FILESTORE_SERVER__HOST": HOST})


def make_test_files(source: Path, sizes: list[tuple[str, int]]) -> dict[str, bytes]:
    source.mkdir()
    files = {}
    for label, size in sizes:
        data = os.urandom(size)
        (source / f"{label}.bin").write_bytes(data)
        files[label] = data
    return files


class Setup(NamedTuple):
    """What a GET benchmark's run starts from, in its temp directory `work`."""

    busy_before: float  # cpu_busy() before anything started
    lua: Path  # the wrk reporter
    logs: Path  # the servers' logs
    data_dir: Path  # filestore's (empty yet)
    files: dict[str, bytes]  # size label -> the test file's bytes


def set_up(work: Path, sizes: list[tuple[str, int]]) -> Setup:
    busy_before = cpu_busy()
    log(f"CPU busy before start (other processes, steal): {busy_before:.0%}")
    lua = work / "report.lua"
    lua.write_text(WRK_REPORT_LUA)
    logs = work / "logs"
    logs.mkdir()
    files = make_test_files(work / "source", sizes)
    log(f"work directory {work}; test files {', '.join(f'{k}.bin' for k in files)}")
    return Setup(busy_before, lua, logs, work / "filestore-data", files)


def put_test_files(port: int, token: str, files: dict[str, bytes]) -> None:
    """PUT every test file to filestore as `<label>.bin`."""
    for label, data in files.items():
        status, reply = http_request(
            port, "PUT", f"/files/{label}.bin", body=data,
            headers={"authorization": f"Bearer {token}",
                     "content-type": "application/octet-stream"})
        if status not in (200, 201):
            raise BenchError(f"filestore: PUT /files/{label}.bin -> {status}: {reply[:300]!r}")


def run(args: argparse.Namespace, work: Path, found_versions: dict[str, str]) -> int:
    busy_before, lua, logs, data_dir, files = set_up(work, args.sizes)
    fs_cmd = filestore_command()

    # 1. Token, then PUT every file through filestore itself, so every server serves its bytes.
    fs_port = free_port()
    env = serve_env(data_dir, fs_port)
    token = filestore_token(env)
    setup = Server("filestore (setup)", [*fs_cmd, "serve", "--workers", str(args.workers)],
                   logs / "filestore-setup.log", env, port=fs_port, workers=args.workers)
    with running(setup):
        put_test_files(fs_port, token, files)
    files_root = data_dir / "files"
    for label, data in files.items():
        if (files_root / f"{label}.bin").read_bytes() != data:
            raise BenchError(f"{files_root / f'{label}.bin'} does not hold the PUT bytes")

    # 2. The three servers, all up at once; for each size their runs are taken in turns, so a
    # ratio compares figures of the same minute on a machine shared with other work (an idle
    # server costs the others nothing).
    results: dict[tuple[str, str], Measurement] = {}
    put_result: PutResult | None = None
    problems: list[str] = []

    nginx = nginx_server(args.nginx, work / "nginx", logs / "nginx.log", free_port(), files_root)
    app_dir = work / "starlette"
    app_dir.mkdir()
    (app_dir / "bench_starlette_app.py").write_text(STARLETTE_APP)
    port = free_port()
    starlette = Server(
        "starlette",
        [sys.executable, "-m", "uvicorn", "bench_starlette_app:app", "--app-dir", str(app_dir),
         "--host", HOST, "--port", str(port), "--workers", str(args.workers),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        logs / "starlette.log", {**os.environ, "BENCH_ROOT": str(files_root)},
        port=port, workers=args.workers,
    )
    (app_dir / "bench_asgi_app.py").write_text(ASGI_APP)
    port = free_port()
    asgi = Server(
        "asgi",
        [sys.executable, str(app_dir / "bench_asgi_app.py"), HOST, str(port), str(args.workers)],
        logs / "asgi.log", {**os.environ, "BENCH_ROOT": str(files_root)},
        port=port, workers=args.workers,
    )
    port = free_port()
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore.log", serve_env(data_dir, port), port=port,
                       workers=args.workers)
    with running(nginx), running(starlette), running(asgi), running(filestore):
        time.sleep(1)  # let every uvicorn worker finish importing its app
        for label, data in files.items():
            found = measure_interleaved(
                {"nginx": (nginx.port, f"/{label}.bin"),
                 "starlette": (starlette.port, f"/{label}.bin"),
                 "asgi": (asgi.port, f"/{label}.bin"),
                 "filestore": (filestore.port, f"/files/{label}.bin")},
                label, data, args, lua)
            for target, measurement in found.items():
                results[target, label] = measurement
        if args.put_size:
            free = shutil.disk_usage(work).free
            if free < args.put_size + GIB:
                problems.append(f"PUT memory check skipped: {free / GIB:.1f} GiB free in {work}")
            else:
                log(f"filestore: streaming PUT of {args.put_size / MIB:,.0f} MiB")
                put_result = measure_put_memory(filestore, token, args.put_size)
    for server in (setup, filestore):
        problems += [f"{server.name} log: {line}"
                     for line in log_problems(server.log_path, LOG_MARKS)]

    # 3. Report.
    print()
    print(f"GET throughput, {args.workers} worker(s) for starlette, asgi and filestore, nginx "
          f"{nproc()} worker(s); wrk {args.duration}s x {args.runs} run(s) after a "
          f"{args.warmup}s warm-up, median; MB/s = payload 10^6 bytes/s; all on {HOST}")
    print(versions_text(found_versions))
    print()
    print_table(results, args.sizes, args.workers)
    print()
    print_commands(results, args.sizes, TARGETS,
                   "the reporter embedded in this script, written to the temp directory")
    if put_result is not None:
        size_text = (f"{put_result.size / GIB:g} GiB" if put_result.size % GIB == 0
                     else f"{put_result.size / MIB:,.1f} MiB")
        print()
        print(f"PUT {size_text}: peak RSS growth {put_result.growth_mib:.1f} MiB "
              f"(target < {PUT_RSS_TARGET_MIB} MiB)")
        print(f"  {put_result.seconds:.1f} s, {put_result.size / put_result.seconds / 1e6:,.0f} "
              f"MB/s (client generates the body with os.urandom on the same CPUs)"
              + ("" if put_result.hwm_reset else "; VmHWM could not be reset: growth over "
                                                 "the earlier peak only"))
        for pid, mem in put_result.workers.items():
            print(f"  worker {pid}: VmRSS before {mem['rss_before_mib']:.1f} MiB, VmHWM after "
                  f"{mem['hwm_after_mib']:.1f} MiB, VmRSS after {mem['rss_after_mib']:.1f} MiB")
    return finish(args, found_versions, {"put_size": args.put_size}, results, busy_before,
                  problems, {"put": put_result.as_dict() if put_result else None})


def main_with_tools(prog: str, work_prefix: str, args: argparse.Namespace,
                    run: Callable[[argparse.Namespace, Path, dict[str, str]], int]) -> int:
    """`run(args, work, versions)` under `run_main`, with `args.nginx` and `args.wrk` the
    tools' paths; exit status 2 without them."""
    tools = find_tools(prog, "nginx", "wrk")
    if tools is None:
        return 2
    args.nginx, args.wrk = tools

    def body(work: Path) -> int:
        found = versions(args.nginx, args.wrk)
        log("versions: " + versions_text(found))
        return run(args, work, found)

    return run_main(prog, work_prefix, args.keep, body)


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_tools("bench/serve.py", "filestore-bench-", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
