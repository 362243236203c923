"""Helpers shared by the benchmark scripts `bench/serve.py` and `bench/upload.py`.

Logging and the error type, size arguments, ports and child processes in their own sessions,
/proc readings, stdlib HTTP requests, random payloads, the filestore command and environment,
table printing, version lookup, and `run_main`: the temp directory, SIGTERM and error handling
around a benchmark's run.

Both scripts are run as `python bench/<name>.py`, which puts `bench/` first on `sys.path`, so
they import this module as plain `benchlib`. Stdlib only: nothing here may need extra packages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
BLOCK = MIB  # block size of generated payloads and of HTTP bodies sent from files
START_TIMEOUT = 30.0  # seconds from the spawn until a process must be ready
# Log lines that point at a problem in any server's output; each script adds its own marks.
ERROR_MARKS = ("Traceback", "ERROR", "CRITICAL", "Exception")

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


def package_versions(*packages: str) -> dict[str, str]:
    """Installed version of each distribution, `?` for one that is not installed."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "?"
    return found


# -- processes ------------------------------------------------------------------------------------


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


# -- main -----------------------------------------------------------------------------------------


def run_main(prog: str, work_prefix: str, keep: bool, body: Callable[[Path], int]) -> int:
    """Run `body(work)` in a fresh temp directory `work`, removed afterwards unless `keep`.

    A SIGTERM unwinds like Ctrl-C, so every server started so far is stopped. A BenchError is
    reported as one line (`<prog>: <error>`) with exit status 1, an interrupt with 130.
    """

    def terminated(signum: int, frame: object) -> None:
        print(f"{prog}: terminated", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    work = Path(tempfile.mkdtemp(prefix=work_prefix))
    try:
        return body(work)
    except BenchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def fmt_runs(values: Sequence[float], digits: int = 1) -> str:
    """The figures of every run, for a table's last columns."""
    return ", ".join(f"{v:,.{digits}f}" for v in values)


def add_output_options(parser: argparse.ArgumentParser, temp_holds: str, *,
                       json_output: bool = True) -> None:
    """The options every benchmark shares: `--json PATH` for the results, `--keep` for the
    temp directory (which holds `temp_holds`)."""
    if json_output:
        parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                            help="also write the results as JSON to PATH")
    parser.add_argument("--keep", action="store_true",
                        help=f"keep the temp directory ({temp_holds})")


def size_text(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"
