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
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

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
    filestore_command,
    filestore_env,
    filestore_settings,
    filestore_token,
    free_port,
    http_request,
    log,
    log_problems,
    mem_status,
    nproc,
    package_versions,
    parse_size,
    port_open,
    print_rows,
    random_blocks,
    run_main,
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
    add_output_options(parser, "data, configs, server logs")
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
    print_rows(rows, right_align=True)
    print()
    lat = ["size"] + [f"{t} p50/p99 ms" for t in TARGETS] + [f"{t} errors" for t in TARGETS]
    rows = [lat]
    for label, _ in sizes:
        ms = [results[t, label] for t in TARGETS]
        rows.append([label, *(f"{m.p50_ms:.2f} / {m.p99_ms:.2f}" for m in ms),
                     *(str(m.errors) for m in ms)])
    print_rows(rows, right_align=True)
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


def versions(nginx_path: str, wrk_path: str) -> dict[str, str]:
    found = {"python": sys.version.split()[0], "cpus": str(nproc())}
    nginx = subprocess.run([nginx_path, "-v"], capture_output=True, text=True, check=False)
    found["nginx"] = (nginx.stderr or nginx.stdout).strip().removeprefix("nginx version: ")
    wrk = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout.splitlines() or ["?"])[0].split(" [")[0].removeprefix("wrk ")
    found.update(package_versions("filestore", "starlette", "uvicorn", "uvloop", "httptools"))
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
    env = serve_env(data_dir, fs_port)
    token = filestore_token(env)
    setup = Server("filestore (setup)", [*fs_cmd, "serve", "--workers", str(args.workers)],
                   logs / "filestore-setup.log", env, port=fs_port, workers=args.workers)
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
                             "-c", str(conf)], logs / "nginx.log",
                   port=port, workers=nproc(), uvicorn=False)
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
        logs / "starlette.log", {**os.environ, "BENCH_ROOT": str(files_root)},
        port=port, workers=args.workers,
    )
    with running(starlette):
        time.sleep(1)  # let every worker finish importing the app
        for label, data in files.items():
            results["starlette", label] = measure("starlette", port, f"/{label}.bin", label,
                                                  data, args, lua)

    port = free_port()
    env = serve_env(data_dir, port)
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore.log", env, port=port, workers=args.workers)
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
        problems += [f"{server.name} log: {line}"
                     for line in log_problems(server.log_path, LOG_MARKS)]

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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.nginx, args.wrk = find_tool("nginx"), find_tool("wrk")
    missing = [tool for tool in ("nginx", "wrk") if getattr(args, tool) is None]
    if missing:
        print(f"bench/serve.py: {' and '.join(missing)} not found; install "
              f"{' '.join(missing)} (Debian: apt-get install -y nginx wrk)", file=sys.stderr)
        return 2

    def body(work: Path) -> int:
        found = versions(args.nginx, args.wrk)
        log("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
        return run(args, work, found)

    return run_main("bench/serve.py", "filestore-bench-", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
