"""Helpers shared by the benchmark scripts in `bench/`.

Logging and the error type, size and count arguments and the --quick profiles, ports, tools
and child processes in their own sessions, /proc readings (memory, how busy the CPUs are),
stdlib HTTP requests and the timed raw-socket GET, random payloads, the filestore command,
environment and PUT, table and problem printing, version lookup, the JSON file, and
`run_main`: the temp directory, SIGTERM and error handling around a benchmark's run.

The scripts are run as `python bench/<name>.py`, which puts `bench/` first on `sys.path`, so
they import this module as plain `benchlib`. Stdlib only: nothing here may need extra packages.
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
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BLOCK = MIB  # block size of generated payloads and of HTTP bodies sent from files
START_TIMEOUT = 30.0  # seconds from the spawn until a process must be ready
# Log lines that point at a problem in any server's output; each script adds its own marks.
ERROR_MARKS = ("Traceback", "ERROR", "CRITICAL", "Exception")
# ... and for a filestore with a remote, where a clean run logs no warning or failure either.
WARNING_MARKS = (*ERROR_MARKS, "WARNING", "failed", "error:", "recovery")
# uvicorn shuts down gracefully on SIGTERM and then re-raises the signal, so -SIGTERM is clean.
CLEAN_EXIT = (0, -signal.SIGTERM, None)
SHM = Path("/dev/shm")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([a-z]*)$")


def log(message: str) -> None:
    """One time-stamped progress line on stderr (stdout carries the report only)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A set-up or verification failure: reported as one line, exit status 1."""


# -- arguments ------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """`1k`, `64k`, `32m`, `1MiB`, `1GiB` (k/m/g and KiB/MiB/GiB are binary, kb/mb/gb decimal),
    plain bytes, or 0."""
    match = _SIZE_RE.match(text.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (examples: 1k, 32m, 1MiB, 64MiB, 1GiB, 0)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def count_value(text: str) -> int | None:
    """`10`, `100k`, `1m` as a number (k = 1,000, m = 1,000,000); None if it is not one."""
    part = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
    digits = part[:-1] if scale > 1 else part
    return int(digits) * scale if digits.isdigit() else None


def apply_profile(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> None:
    """Every option of the profile (`quick` under --quick, else `full`) left unset (None) takes
    the profile's value."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


# -- machine --------------------------------------------------------------------------------------


def nproc() -> int:
    """CPUs this process may run on, as `nproc` prints them."""
    return len(os.sched_getaffinity(0))


@dataclasses.dataclass(frozen=True)
class MemStatus:
    """A process's resident set size and its high-water mark, in KiB."""

    rss_kib: int
    hwm_kib: int


def mem_status(pid: int) -> MemStatus | None:
    """VmRSS and VmHWM from /proc/<pid>/status; None if the process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])  # kB
    if "VmRSS" not in fields:
        return None  # a zombie
    return MemStatus(fields["VmRSS"], fields.get("VmHWM", 0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` (all its threads) has used; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (in parentheses, may hold spaces): utime, stime are 14, 15.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def busy_problems(before: float, after: float, figures: str = "figures") -> list[str]:
    """A problem line for each `cpu_busy` reading, taken before and after the run, that says
    the machine was shared with other work (more than 15% busy)."""
    return [f"the CPUs were {busy:.0%} busy with other work {when} the run (incl. hypervisor "
            f"steal): {figures} are unreliable, ratios less so"
            for when, busy in (("before", before), ("after", after)) if busy > 0.15]


def versions_text(found: dict[str, str]) -> str:
    """`name version, name version, ...` for a report's header."""
    return ", ".join(f"{k} {v}" for k, v in found.items())


def package_versions(*packages: str) -> dict[str, str]:
    """Installed version of each distribution, `?` for one that is not installed."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "?"
    return found


def git_revision() -> str | None:
    """The revision measured, "-dirty" when the working tree has uncommitted changes; None
    outside a git checkout or without git."""
    with contextlib.suppress(OSError):
        git = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=False,
        )
        if git.returncode == 0:
            return git.stdout.strip()
    return None


# -- processes ------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def find_tools(prog: str, *names: str) -> list[str] | None:
    """The path of each tool; None, after a one-line message naming the missing ones, if any
    is not installed."""
    found = [find_tool(name) for name in names]
    missing = [name for name, path in zip(names, found, strict=True) if path is None]
    if missing:
        print(f"{prog}: {' and '.join(missing)} not found; install {' '.join(missing)} "
              f"(Debian: apt-get install -y {' '.join(names)})", file=sys.stderr)
        return None
    return [path for path in found if path is not None]


def free_port() -> int:
    """A port of HOST that nothing listens on (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether `port` of HOST accepts a connection within `timeout` seconds."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def console_script(name: str) -> str | None:
    """A console script next to this interpreter (the venv's), else from PATH; None if neither."""
    script = Path(sys.executable).with_name(name)
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return shutil.which(name)


@dataclasses.dataclass
class Process:
    """A child in its own session (so a Ctrl-C reaches this script only, and it and any workers
    it forks can be stopped together), its output appended to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    log_command: bool = False  # write `--- name: argv` to the log before the spawn
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() just before the spawn

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            if self.log_command:
                log_file.write(f"--- {self.name}: {' '.join(self.argv)}\n".encode())
                log_file.flush()
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        """BenchError, with the log's tail, if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}:\n"
                             f"{self.log_tail()}")

    def wait_for(self, ready: Callable[[], bool], what: str, poll: float = 0.05) -> float:
        """Until `ready()` is true, polled every `poll` seconds; seconds since the spawn.
        BenchError if the process exits or START_TIMEOUT passes first (`what` names the wait:
        "did not <what> within ...")."""
        deadline = self.started_at + START_TIMEOUT
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not {what} within {START_TIMEOUT:.0f}s:\n"
                                 f"{self.log_tail()}")
            time.sleep(poll)
        return time.monotonic() - self.started_at

    def wait_port(self, port: int, poll: float = 0.05, connect_timeout: float = 0.5) -> float:
        """Until `port` accepts connections; seconds since the spawn."""
        return self.wait_for(lambda: port_open(port, connect_timeout), f"open port {port}", poll)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait `timeout` seconds, SIGKILL; then kill whatever is left of its process
        group. Its exit status (None if it was never started or is already stopped)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: did not stop within {timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Anything it left behind (e.g. workers orphaned by a parent that died) is still in its
        # process group, whose id is the child's pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@contextlib.contextmanager
def started(process: Process, port: int | None = None, poll: float = 0.05,
            connect_timeout: float = 0.5) -> Iterator[Process]:
    """`process` running (and, given `port`, accepting connections on it); stopped on the way
    out whatever happens, and an unclean exit status logged."""
    process.start()
    try:
        if port is not None:
            process.wait_port(port, poll, connect_timeout)
        yield process
    finally:
        status = process.stop()
        if status not in CLEAN_EXIT:
            log(f"{process.name}: exit status {status}")


def log_problems(path: Path, marks: Sequence[str]) -> list[str]:
    """Lines of a server log that contain one of `marks` (a clean run prints none of them);
    the `--- name: argv` lines that `Process` writes are not the server's."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines()
            if any(mark in line for mark in marks) and not line.startswith("---")]


# -- filestore ------------------------------------------------------------------------------------


def filestore_command() -> list[str]:
    """The `filestore` console script of this interpreter's venv, else from PATH, else
    `python -m filestore`."""
    found = console_script("filestore")
    return [found] if found else [sys.executable, "-m", "filestore"]


def filestore_settings(data_dir: Path, port: int) -> dict[str, str]:
    """The settings every benchmark gives filestore: its data directory, its port, and no
    free-space reserve."""
    return {
        "FILESTORE_STORAGE__DATA_DIR": str(data_dir),
        "FILESTORE_SERVER__PORT": str(port),
        "FILESTORE_STORAGE__MIN_FREE": "0",
    }


def filestore_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any FILESTORE_* variable, plus `settings`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    return {**base, **settings}


def filestore_token(env: dict[str, str]) -> str:
    """A bearer token from `filestore token` run with `env`."""
    result = subprocess.run([*filestore_command(), "token"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise BenchError(f"`filestore token` failed ({result.returncode}): "
                         f"{result.stderr.strip()}")
    return result.stdout.strip()


def put_file(port: int, token: str, path: str, source: Path, size: int) -> None:
    """PUT the file `source` (`size` bytes) to filestore as `path`, streamed from disk; BenchError
    unless filestore stored it (200/201 and its answer's size)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(size),
               "Content-Type": "application/octet-stream"}
    with open(source, "rb") as body:
        status, reply = http_request(port, "PUT", f"/files/{urllib.parse.quote(path)}",
                                     body=body, headers=headers, timeout=300)
    if status not in (200, 201):
        raise BenchError(f"PUT {path} -> {status}: {reply[:300]!r}")
    if json.loads(reply).get("size") != size:
        raise BenchError(f"PUT {path} stored something else: {reply[:300]!r}")


class Putter:
    """Sequential PUTs to filestore over one keep-alive connection; the latency of each, in
    ms. Each must create its path (201)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self.headers = {"authorization": f"Bearer {token}",
                        "content-type": "application/octet-stream"}

    def put(self, path: str, data: bytes) -> float:
        began = time.perf_counter()
        try:
            self.conn.request("PUT", f"/files/{urllib.parse.quote(path)}", body=data,
                              headers=self.headers)
            response = self.conn.getresponse()
            reply = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"PUT {path} on port {self.port} failed: {exc!r}") from None
        seconds = time.perf_counter() - began
        if response.status != 201:
            raise BenchError(f"PUT {path} on port {self.port} -> {response.status}: "
                             f"{reply[:300]!r}")
        return seconds * 1000

    def close(self) -> None:
        self.conn.close()


@dataclasses.dataclass
class PutRounds:
    """What `put_rounds` measured: per side, every PUT's ms and path; per round, each side's
    median."""

    samples: dict[str, list[float]]
    paths: dict[str, list[str]]
    rounds: list[dict[str, float]]


def warm_up(putters: dict[str, Putter], data: bytes) -> None:
    """Five unmeasured PUTs per side: the connections open, first-request costs paid."""
    for side, putter in putters.items():
        for i in range(5):
            putter.put(f"warmup/{side}/{i}.bin", data)


def put_rounds(putters: dict[str, Putter], data: bytes, total: int, rounds: int) -> PutRounds:
    """`total` PUTs of `data` per side (side -> putter) to new paths `put/<side>/NNNNN.bin`, in
    `rounds` rounds, the sides in turns and their order reversed from round to round, so that a
    load drifting meanwhile moves every side alike (after `warm_up`)."""
    measured = PutRounds({side: [] for side in putters}, {side: [] for side in putters}, [])
    per_round = [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]
    done = 0
    for r, count in enumerate(per_round):
        order = list(putters) if r % 2 == 0 else list(reversed(putters))
        medians = {}
        for side in order:
            names = [f"put/{side}/{done + i:05d}.bin" for i in range(count)]
            got = [putters[side].put(path, data) for path in names]
            measured.samples[side] += got
            measured.paths[side] += names
            medians[side] = statistics.median(got)
        done += count
        measured.rounds.append(medians)
        log(f"PUT round {r + 1}/{rounds} ({count} each): "
            + ", ".join(f"{side} median {medians[side]:.2f} ms" for side in putters))
    return measured


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def latency(values: Sequence[float]) -> dict[str, Any]:
    return {"median_ms": statistics.median(values), "p95_ms": p95(values),
            "mean_ms": statistics.fmean(values), "max_ms": max(values), "count": len(values),
            "samples_ms": list(values)}


# -- HTTP (stdlib only: nothing here may be the bottleneck or need extra packages) ---------------


def http_request(
    port: int, method: str, path: str, *,
    body: bytes | IO[bytes] | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None, timeout: float = 60.0,
) -> tuple[int, bytes]:
    """One request to HOST:`port` on a fresh connection; (status, response body). A file body
    is sent in BLOCK-sized reads. BenchError if the connection or the exchange fails."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout, blocksize=BLOCK)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{method} http://{HOST}:{port}{path} failed: {exc!r}") from None
    finally:
        conn.close()


@dataclasses.dataclass
class Timing:
    """One GET as the client saw it, in ms from the request (for `raw_get`: from the TCP
    connect)."""

    ttfb_ms: float
    total_ms: float
    last_gap_ms: float | None  # arrival of byte n-1 to byte n (None: not measured)
    sha256: str


def get_request(port: int, path: str) -> bytes:
    """The bytes of `GET /files/<path>` to HOST:`port` with `Connection: close`."""
    return (f"GET /files/{urllib.parse.quote(path)} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Connection: close\r\n\r\n").encode()


def parse_head(head: bytes, what: str) -> tuple[int, dict[str, str]]:
    """The status and the (lower-cased) headers of a response head, without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise BenchError(f"{what}: not an HTTP response: {lines[0][:100]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def raw_get(port: int, path: str, size: int, timeout: float = 60.0,
            what: str | None = None) -> Timing:
    """GET /files/<path> on a fresh socket (TCP_NODELAY, `Connection: close`); the body of
    `size` bytes (its content-length must say so) lands in a preallocated buffer in reads of
    up to 1 MiB and is hashed only after the last byte arrived. `what` names the GET in errors
    (default `GET <path>`)."""
    what = what or f"GET {path}"
    buffer = bytearray(size)
    view = memoryview(buffer)
    request = get_request(port, path)
    first = penultimate = None
    got = 0
    started = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            head = bytearray()
            while (end := head.find(b"\r\n\r\n")) < 0:
                chunk = sock.recv(64 * KIB)
                now = time.perf_counter()
                if not chunk:
                    raise BenchError(f"{what}: connection closed before the headers")
                head += chunk
            status, headers = parse_head(bytes(head[:end]), what)
            if status != 200:
                raise BenchError(f"{what} -> {status}: {bytes(head[end + 4:])[:300]!r}")
            if headers.get("content-length") != str(size):
                raise BenchError(f"{what}: content-length {headers.get('content-length')}, "
                                 f"expected {size}")
            extra = head[end + 4:]
            if len(extra) > size:
                raise BenchError(f"{what}: more than content-length bytes")
            if extra:
                view[:len(extra)] = extra
                got = len(extra)
                first = now
                if got >= size - 1:
                    penultimate = now
            while got < size:
                count = sock.recv_into(view[got:got + min(MIB, size - got)])
                now = time.perf_counter()
                if count == 0:
                    raise BenchError(f"{what}: connection closed after {got} of {size} bytes")
                if first is None:
                    first = now
                got += count
                if penultimate is None and got >= size - 1:
                    penultimate = now
            last = now
    except OSError as exc:
        raise BenchError(f"{what} failed after {got} of {size} body bytes: {exc!r}") from None
    assert first is not None and penultimate is not None
    return Timing((first - started) * 1000, (last - started) * 1000,
                  (last - penultimate) * 1000, hashlib.sha256(buffer).hexdigest())


def random_blocks(total: int) -> Iterator[bytes]:
    """`total` random bytes in BLOCK-sized pieces, made as they are consumed."""
    remaining = total
    while remaining:
        block = os.urandom(min(BLOCK, remaining))
        remaining -= len(block)
        yield block


# -- report ---------------------------------------------------------------------------------------


def print_rows(rows: list[list[str]], right_align: bool = False) -> None:
    """A table with a dashed line under the first row; columns after the first are
    right-aligned if `right_align`, else left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) if right_align else cell.ljust(width)
            for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def print_problems(problems: Sequence[str], heading: str = "problems",
                   clean: str | None = None) -> None:
    """After a blank line, `heading:` and the problems, one to a line; with none, nothing, or
    `heading: none (<clean>)` if `clean` says what a clean run showed."""
    if problems:
        print()
        print(f"{heading}:")
        for problem in problems:
            print(f"  {problem}")
    elif clean is not None:
        print()
        print(f"{heading}: none ({clean})")


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def ratio_text(numerator: float, denominator: float, digits: int = 2) -> str:
    return f"{numerator / denominator:.{digits}f}x" if denominator else "-"


def count_text(n: int) -> str:
    """`10k`, `1M` for round counts, else the count with thousands separators."""
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n:,}"


def args_json(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as JSON-ready values (paths as text)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_json(path: Path | None, results: dict[str, Any], **dumps: Any) -> None:
    """The results as indented JSON to `path` (the --json option), if one was given."""
    if path:
        path.write_text(json.dumps(results, indent=2, **dumps) + "\n")
        log(f"results written to {path}")


# -- main -----------------------------------------------------------------------------------------


def scratch_base() -> Path:
    """/dev/shm when it is writable, else the temp directory: on tmpfs an fsync (SQLite's
    synchronous = FULL on every commit) costs nothing, so the figures are the code's own work,
    not the disk's."""
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        return SHM
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def temp_directory(prefix: str, keep: bool, in_memory: bool = False) -> Iterator[Path]:
    """A fresh temp directory (under `scratch_base()` if `in_memory`), removed on the way out
    unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_base() if in_memory else None))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_main(prog: str, work_prefix: str, keep: bool, body: Callable[[Path], int],
             in_memory: bool = False) -> int:
    """Run `body(work)` in a fresh `temp_directory` `work`, removed afterwards unless `keep`.

    A SIGTERM unwinds like Ctrl-C, so every server started so far is stopped (and the temp
    directory removed). A BenchError is reported as one line (`<prog>: <error>`) with exit
    status 1, an interrupt with 130.
    """

    def terminated(signum: int, frame: object) -> None:
        print(f"{prog}: terminated", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    with temp_directory(work_prefix, keep, in_memory) as work:
        try:
            return body(work)
        except BenchError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130


def fmt_runs(values: Sequence[float], digits: int = 1) -> str:
    """The figures of every run, for a table's last columns."""
    return ", ".join(f"{v:,.{digits}f}" for v in values)


def add_output_options(parser: argparse.ArgumentParser, temp_holds: str) -> None:
    """The options every benchmark shares: `--json PATH` for the results, `--keep` for the
    temp directory (which holds `temp_holds`)."""
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--keep", action="store_true",
                        help=f"keep the temp directory ({temp_holds})")


def size_text(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"
