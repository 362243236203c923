"""Serving benchmark: filestore GET throughput against nginx and bare Starlette, and PUT memory.

What is measured
    GET throughput of the same bytes (random files of each --sizes size, default 1 KiB, 64 KiB,
    1 MiB, 32 MiB) from three servers on 127.0.0.1, one after the other:

    1. nginx (one worker per core, sendfile, tcp_nopush, open_file_cache, no access log) with
       `root` = filestore's own `data_dir/files/`: the physical limit of this machine;
    2. a bare Starlette `FileResponse` app under uvicorn (uvloop, httptools, no access log, same
       worker count): what a straightforward Python server reaches;
    3. `filestore serve --workers N`: the product, including its registry lookup, validators and
       headers on every request.

    Each figure comes from `wrk -t2 -c32 -dDURATION URL` (`-c4` for 32 MiB), after an unrecorded
    warm-up run, as the median over --runs runs. MB/s is payload only (req/s x file size, 10^6
    bytes/s). Non-2xx responses (wrk counts status >= 400) and socket errors are counted as errors.
    Before measuring, every URL is fetched once and must return 200 and exactly the file's bytes.

    Streaming PUT memory: a body of --put-size bytes (default 1 GiB), generated on the fly from
    os.urandom blocks and never held in memory, is PUT to filestore; the report is the peak RSS
    growth of the uvicorn worker processes (VmHWM after the PUT minus VmRSS before it, with the
    high-water mark reset through /proc/<pid>/clear_refs first). A streaming server stays flat.

Why
    Ratios against nginx and Starlette on the same machine are what can be compared across
    machines; absolute figures cannot. wrk shares the CPUs with the server under test, so absolute
    req/s understate every server alike. The small files measure per-request overhead, the 32 MiB
    file measures how fast the body is moved.

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
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BLOCK = MIB  # generation and upload block size
PUT_PATH = "bench-put.bin"
PUT_RSS_TARGET_MIB = 64
STOP_TIMEOUT = 15.0
START_TIMEOUT = 30.0
# Files of this size or more are measured with few connections (as in the reference anchors).
LARGE_FILE = 32 * MIB
# Targets for --workers 2 (for context; printed, never enforced).
TARGET_1K_RPS_RATIO = 0.25
TARGET_32M_MBPS_RATIO = 0.8

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([a-z]*)$")
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

NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  open_file_cache max=1000 inactive=60s;
  default_type application/octet-stream;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen {host}:{port};
    root {root};
    location / {{ }}
  }}
}}
"""


def nproc() -> int:
    """CPUs this process may run on, as `nproc` prints them."""
    return len(os.sched_getaffinity(0))


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time that was not idle (steal included) over `seconds`: what other
    processes and the hypervisor take before this script starts any load of its own."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A set-up or verification failure: reported as one line, exit status 1."""


# -- arguments --------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """`1k`, `64k`, `1m`, `32m`, `1GiB` (k/m/g are binary, kb/mb/gb decimal) or plain bytes."""
    match = _SIZE_RE.match(text.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1k, 32m, 1GiB, 0)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/serve.py",
        description="GET throughput of filestore vs nginx vs bare Starlette, and PUT memory.",
    )
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("5s"),
                        help="wrk duration per measured run (default 5s)")
    parser.add_argument("--warmup", type=parse_duration, default=parse_duration("2s"),
                        help="unrecorded wrk run before each target/size (default 2s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measured runs per target/size; the median is reported (default 1)")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1k,64k,1m,32m"),
                        help="comma-separated file sizes (default 1k,64k,1m,32m)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the uvicorn servers (default 2)")
    parser.add_argument("--put-size", type=parse_size, default=GIB,
                        help="size of the streamed PUT for the memory check; 0 skips it "
                             "(default 1GiB)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (data, configs, server logs)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be from 1 to 64")
    return args


# -- processes --------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def filestore_command() -> list[str]:
    script = Path(sys.executable).with_name("filestore")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("filestore")
    return [found] if found else [sys.executable, "-m", "filestore"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


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


@dataclasses.dataclass
class Server:
    """A server process in its own session, so that it and its workers can be stopped together
    and a Ctrl-C reaches this script only."""

    name: str
    argv: list[str]
    port: int
    workers: int
    log_path: Path
    env: dict[str, str] | None = None
    uvicorn: bool = True  # wait for its `workers` worker processes before measuring
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        log(f"{self.name}: started pid {self.proc.pid} on port {self.port}")

    def wait_ready(self) -> None:
        """Until the port accepts connections and (uvicorn) all worker processes exist."""
        assert self.proc is not None
        expected_workers = self.workers if self.uvicorn and self.workers > 1 else 0
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
            ready = port_open(self.port)
            if ready and expected_workers:
                ready = len(uvicorn_workers(self.proc.pid, self.workers)) >= expected_workers
            if ready:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not get ready within {START_TIMEOUT:.0f}s:\n"
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return uvicorn_workers(self.proc.pid, self.workers)

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL on timeout; then make sure nothing of its group is left."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: did not stop within {STOP_TIMEOUT:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers orphaned by a parent that died are still in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log(f"{self.name}: stopped (exit status {proc.returncode})")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def log_problems(self) -> list[str]:
        """Log lines that point at a problem: errors, tracebacks, and crash recovery (every
        server here was stopped cleanly, so the next start has nothing to recover)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        marks = ("Traceback", "ERROR", "CRITICAL", "Exception", "recovery:")
        return [line for line in text.splitlines() if any(m in line for m in marks)]


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# -- HTTP helpers (stdlib only: nothing here may be the bottleneck or need extra packages) ------


def http_request(
    port: int, method: str, path: str, *, body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None, timeout: float = 60.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{method} http://{HOST}:{port}{path} failed: {exc!r}") from None
    finally:
        conn.close()


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


def measure(
    target: str, port: int, url_path: str, label: str, data: bytes,
    args: argparse.Namespace, lua: Path,
) -> Measurement:
    url = f"http://{HOST}:{port}{url_path}"
    check_get(port, url_path, data, target)
    run_wrk(wrk_argv(url, len(data), args.warmup), args.warmup, args.wrk)
    argv = wrk_argv(url, len(data), args.duration, lua)
    runs = []
    for i in range(args.runs):
        run = run_wrk(argv, args.duration, args.wrk)
        assert run is not None
        runs.append(run)
        log(f"{target} {label} run {i + 1}/{args.runs}: {run.rps:,.0f} req/s, "
            f"{run.rps * len(data) / 1e6:,.1f} MB/s, p50 {run.p50_ms:.2f} ms, "
            f"p99 {run.p99_ms:.2f} ms, errors {run.errors}")
    shown = wrk_argv(url, len(data), args.duration, Path(lua.name))
    return Measurement(target, label, len(data), " ".join(shown), runs)


# -- streaming PUT memory -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemStatus:
    rss_kib: int
    hwm_kib: int


def mem_status(pid: int) -> MemStatus:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])  # kB
    return MemStatus(fields["VmRSS"], fields["VmHWM"])


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
    remaining = total
    while remaining:
        block = os.urandom(min(BLOCK, remaining))
        digest.update(block)
        remaining -= len(block)
        yield block


def measure_put_memory(server: Server, token: str, size: int) -> PutResult:
    pids = server.worker_pids()
    if not pids:
        raise BenchError("found no filestore worker processes to watch")
    hwm_reset = all(reset_hwm(pid) for pid in pids)
    before = {pid: mem_status(pid) for pid in pids}
    digest = hashlib.sha256()
    headers = {"authorization": f"Bearer {token}", "content-length": str(size),
               "content-type": "application/octet-stream"}
    started = time.monotonic()
    status, reply = http_request(server.port, "PUT", f"/files/{PUT_PATH}",
                                 body=random_body(size, digest), headers=headers, timeout=600)
    seconds = time.monotonic() - started
    after = {pid: mem_status(pid) for pid in pids}
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

TARGETS = ("nginx", "starlette", "filestore")


def fmt_ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "-"


def print_table(results: dict[tuple[str, str], Measurement], sizes: list[tuple[str, int]],
                workers: int) -> None:
    head = ["size"]
    for target in TARGETS:
        head += [f"{target} req/s", f"{target} MB/s"]
    head += ["fs/nginx", "fs/starlette"]
    rows = [head]
    for label, _ in sizes:
        row = [label]
        for target in TARGETS:
            m = results[target, label]
            row += [f"{m.rps:,.0f}", f"{m.mbps:,.1f}"]
        fs = results["filestore", label].rps
        row += [fmt_ratio(fs, results["nginx", label].rps),
                fmt_ratio(fs, results["starlette", label].rps)]
        rows.append(row)
    _print_rows(rows)
    print()
    lat = ["size"] + [f"{t} p50/p99 ms" for t in TARGETS] + [f"{t} errors" for t in TARGETS]
    rows = [lat]
    for label, _ in sizes:
        ms = [results[t, label] for t in TARGETS]
        rows.append([label, *(f"{m.p50_ms:.2f} / {m.p99_ms:.2f}" for m in ms),
                     *(str(m.errors) for m in ms)])
    _print_rows(rows)
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
    if notes:
        print()
        print(f"targets (this run: {workers} worker(s)):")
        for note in notes:
            print(f"  {note}")


def _print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def versions(nginx_path: str, wrk_path: str) -> dict[str, str]:
    found = {"python": sys.version.split()[0], "cpus": str(nproc())}
    nginx = subprocess.run([nginx_path, "-v"], capture_output=True, text=True, check=False)
    found["nginx"] = (nginx.stderr or nginx.stdout).strip().removeprefix("nginx version: ")
    wrk = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout.splitlines() or ["?"])[0].split(" [")[0].removeprefix("wrk ")
    for package in ("filestore", "starlette", "uvicorn", "uvloop", "httptools"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "?"
    # The revision measured; "-dirty" when the working tree has uncommitted changes.
    with contextlib.suppress(OSError):
        git = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=False,
        )
        if git.returncode == 0:
            found["git"] = git.stdout.strip()
    return found


# -- main -----------------------------------------------------------------------------------------


def filestore_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    env.update({
        "FILESTORE_STORAGE__DATA_DIR": str(data_dir),
        "FILESTORE_SERVER__HOST": HOST,
        "FILESTORE_SERVER__PORT": str(port),
        "FILESTORE_STORAGE__MIN_FREE": "0",
    })
    return env


def make_test_files(source: Path, sizes: list[tuple[str, int]]) -> dict[str, bytes]:
    source.mkdir()
    files = {}
    for label, size in sizes:
        data = os.urandom(size)
        (source / f"{label}.bin").write_bytes(data)
        files[label] = data
    return files


def run(args: argparse.Namespace, work: Path, found_versions: dict[str, str]) -> int:
    busy_before = cpu_busy()
    log(f"CPU busy before start (other processes, steal): {busy_before:.0%}")
    fs_cmd = filestore_command()
    lua = work / "report.lua"
    lua.write_text(WRK_REPORT_LUA)
    logs = work / "logs"
    logs.mkdir()
    data_dir = work / "filestore-data"
    files = make_test_files(work / "source", args.sizes)
    log(f"work directory {work}; test files {', '.join(f'{k}.bin' for k in files)}")

    # 1. Token, then PUT every file through filestore itself, so every server serves its bytes.
    fs_port = free_port()
    env = filestore_env(data_dir, fs_port)
    got = subprocess.run([*fs_cmd, "token"], env=env, capture_output=True, text=True, check=False)
    if got.returncode != 0 or not got.stdout.strip():
        raise BenchError(f"`filestore token` failed ({got.returncode}): {got.stderr.strip()}")
    token = got.stdout.strip()
    setup = Server("filestore (setup)", [*fs_cmd, "serve", "--workers", str(args.workers)],
                   fs_port, args.workers, logs / "filestore-setup.log", env)
    with running(setup):
        for label, data in files.items():
            status, reply = http_request(
                fs_port, "PUT", f"/files/{label}.bin", body=data,
                headers={"authorization": f"Bearer {token}",
                         "content-type": "application/octet-stream"})
            if status not in (200, 201):
                raise BenchError(f"filestore: PUT /files/{label}.bin -> {status}: {reply[:300]!r}")
    files_root = data_dir / "files"
    for label, data in files.items():
        if (files_root / f"{label}.bin").read_bytes() != data:
            raise BenchError(f"{files_root / f'{label}.bin'} does not hold the PUT bytes")

    # 2. The three servers, one at a time, each measured over all sizes.
    results: dict[tuple[str, str], Measurement] = {}
    put_result: PutResult | None = None
    problems: list[str] = []

    prefix = work / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "", workers=nproc(),
        prefix=prefix, host=HOST, port=port, root=files_root))
    nginx = Server("nginx", [args.nginx, "-p", str(prefix), "-e", str(prefix / "logs/error.log"),
                             "-c", str(conf)], port, nproc(), logs / "nginx.log",
                   uvicorn=False)
    with running(nginx):
        for label, data in files.items():
            results["nginx", label] = measure("nginx", port, f"/{label}.bin", label, data,
                                              args, lua)

    app_dir = work / "starlette"
    app_dir.mkdir()
    (app_dir / "bench_starlette_app.py").write_text(STARLETTE_APP)
    port = free_port()
    starlette = Server(
        "starlette",
        [sys.executable, "-m", "uvicorn", "bench_starlette_app:app", "--app-dir", str(app_dir),
         "--host", HOST, "--port", str(port), "--workers", str(args.workers),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        port, args.workers, logs / "starlette.log",
        {**os.environ, "BENCH_ROOT": str(files_root)},
    )
    with running(starlette):
        time.sleep(1)  # let every worker finish importing the app
        for label, data in files.items():
            results["starlette", label] = measure("starlette", port, f"/{label}.bin", label,
                                                  data, args, lua)

    port = free_port()
    env = filestore_env(data_dir, port)
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       port, args.workers, logs / "filestore.log", env)
    with running(filestore):
        time.sleep(1)
        for label, data in files.items():
            results["filestore", label] = measure("filestore", port, f"/files/{label}.bin",
                                                  label, data, args, lua)
        if args.put_size:
            free = shutil.disk_usage(work).free
            if free < args.put_size + GIB:
                problems.append(f"PUT memory check skipped: {free / GIB:.1f} GiB free in {work}")
            else:
                log(f"filestore: streaming PUT of {args.put_size / MIB:,.0f} MiB")
                put_result = measure_put_memory(filestore, token, args.put_size)
    for server in (setup, filestore):
        problems += [f"{server.name} log: {line}" for line in server.log_problems()]

    # 3. Report.
    print()
    print(f"GET throughput, {args.workers} worker(s) for starlette and filestore, nginx "
          f"{nproc()} worker(s); wrk {args.duration}s x {args.runs} run(s) after a "
          f"{args.warmup}s warm-up, median; MB/s = payload 10^6 bytes/s; all on {HOST}")
    print(", ".join(f"{k} {v}" for k, v in found_versions.items()))
    print()
    print_table(results, args.sizes, args.workers)
    print()
    print("wrk commands (report.lua: the reporter embedded in this script, written to the "
          "temp directory):")
    for target in TARGETS:
        for label, _ in args.sizes:
            print(f"  {target:<9} {results[target, label].command}")
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
    busy_after = cpu_busy()
    for when, busy in (("before", busy_before), ("after", busy_after)):
        if busy > 0.15:
            problems.append(f"the CPUs were {busy:.0%} busy with other work {when} the run "
                            "(incl. hypervisor steal): figures are unreliable, ratios less so")
    errors = sum(m.errors for m in results.values())
    if errors:
        problems.append(f"{errors} wrk errors (socket errors or status >= 400); see table")
    if problems:
        print()
        print("problems:")
        for problem in problems:
            print(f"  {problem}")

    if args.json:
        args.json.write_text(json.dumps({
            "versions": found_versions,
            "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "runs": args.runs,
                         "workers": args.workers, "put_size": args.put_size},
            "results": [m.as_dict() for m in results.values()],
            "put": put_result.as_dict() if put_result else None,
            "cpu_busy_before": busy_before,
            "cpu_busy_after": busy_after,
            "problems": problems,
        }, indent=2) + "\n")
        log(f"results written to {args.json}")
    return 0


def _terminated(signum: int, frame: object) -> None:
    # A SIGTERM unwinds like Ctrl-C, so every server started so far is stopped.
    print("bench/serve.py: terminated", file=sys.stderr)
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.nginx, args.wrk = find_tool("nginx"), find_tool("wrk")
    missing = [tool for tool in ("nginx", "wrk") if getattr(args, tool) is None]
    if missing:
        print(f"bench/serve.py: {' and '.join(missing)} not found; install "
              f"{' '.join(missing)} (Debian: apt-get install -y nginx wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    work = Path(tempfile.mkdtemp(prefix="filestore-bench-"))
    try:
        found = versions(args.nginx, args.wrk)
        log("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
        return run(args, work, found)
    except BenchError as exc:
        print(f"bench/serve.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/serve.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
