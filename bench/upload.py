"""Upload benchmark: how fast filestore's queue drains to S3, against a plain aioboto3 script.

What is measured
    One `moto_server` on 127.0.0.1 (a free port) is the S3 store for everything. The workload is
    --small-count files of --small-size and --large-count files of --large-size (default 200 x
    1 MiB and 8 x 64 MiB) of random bytes, generated once into a temp directory.

    1. reference: a plain aioboto3 script in this process uploads the files with asyncio at
       --concurrency (default 4): `put_object(Body=<open file>)` for files up to the multipart
       threshold (64 MiB, filestore's default), a plain multipart upload above it (16 MiB parts,
       2 in flight, as filestore does). Same client configuration as filestore (path addressing,
       request/response checksums "when_required", 32 pooled connections, its timeouts, one
       attempt per call). Wall time runs from creating the client to the last response.
    2. filestore: `filestore serve` is started with uploads paused (`upload.enabled = false`),
       every file is PUT over HTTP, the server is stopped, and started again with uploads enabled
       (`upload.delay = 0s`, `upload.concurrency` = --concurrency). The drain time runs from
       starting that process until its registry (`data_dir/registry.sqlite3`, opened read-only,
       polled every 20 ms) shows every file uploaded: counter `files.local` at 0 and `files.remote`
       at the file count. Nothing is subtracted: process start-up, opening the S3 client, the
       start-up cleanup of unfinished multipart uploads, leasing, the verification HEAD and the
       registry commit per file all count, because all of them are part of what an operator waits
       for. The time until the HTTP port opened and until the first upload was recorded are shown
       beside it so that the fixed start-up cost can be told from the per-file cost.

    MB/s is payload only, 10^6 bytes/s. The ratio filestore/reference is the figure to compare
    (target >= 0.8): both talk to the same moto on the same CPUs, so what moto and the machine
    cost cancels out and what is left is what filestore adds.

    3. memory: one --big file (default 1 GiB; `--big 0` skips) is PUT paused, and the server is
       restarted with uploads enabled; VmRSS of the serve process is sampled from /proc every
       20 ms during the drain. Reported: the peak, and the peak growth over the idle RSS of the
       same server started once more, paused, with nothing to do (the state the drain starts from;
       the uploading process itself is never idle). Target: peak < 100 MiB. Above the multipart
       threshold filestore reads one part per thread call and holds at most two parts, so a
       streaming upload should cost tens of MiB whatever the file size.

    Which upload path each size took (single put_object or multipart) is read back from the
    bucket: a multipart object's ETag ends in "-<parts>". Note that 64 MiB is exactly the
    threshold, and only files *larger* than it go up as multipart.

    Every measurement is repeated --runs times, each time with moto reset, fresh buckets and a
    fresh data directory; the table shows the median and every run.

Why
    filestore answers PUTs from local disk and uploads later; if the queue drains much slower than
    the store accepts uploads, files pile up on local disk. A plain aioboto3 loop is the natural
    yardstick: it is what the queue does, minus the bookkeeping that makes it safe.

Usage
    python bench/upload.py [--runs 1] [--concurrency 4] [--small-count 200] [--small-size 1MiB]
                           [--large-count 8] [--large-size 64MiB] [--big 1GiB]
                           [--drain-timeout 120] [--json PATH] [--keep]

Needs moto's server (`pip install 'moto[server]'`, part of the `test` extra). Everything binds
127.0.0.1; the whole default run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    CLEAN_EXIT,
    GIB,
    KIB,
    MIB,
    WARNING_MARKS,
    BenchError,
    Process,
    add_output_options,
    args_json,
    filestore_command,
    filestore_env,
    filestore_settings,
    filestore_token,
    fmt_runs,
    free_port,
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
    put_file,
    random_blocks,
    run_main,
    size_text,
    started,
    verdict,
    versions_text,
    write_json,
)
from s3lib import CLIENT_CONFIG_TEXT, MAX_CONNECTIONS, Moto, aio_client, remote_settings

PREFIX = "fs"  # filestore's remote is s3://<bucket>/fs; the reference uses the same keys

# filestore's defaults (config.example.toml), which this benchmark does not change.
MULTIPART_THRESHOLD = 64 * MIB
PART_SIZE = 16 * MIB
PARTS_IN_FLIGHT = 2
MAX_PARTS = 10_000

POLL_SECONDS = 0.02
PORT_TIMEOUT = 0.2  # connect timeout of the checks whether a server's port is open
TARGET_RATIO = 0.8
TARGET_PEAK_MIB = 100.0


# -- arguments ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/upload.py",
        description="Upload-queue drain throughput of filestore vs plain aioboto3, and its RSS.",
    )
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of every measurement; the median is reported (default 1)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="uploads at once, for the reference and upload.concurrency "
                             "(default 4)")
    parser.add_argument("--small-count", type=int, default=200, help="small files (default 200)")
    parser.add_argument("--small-size", type=parse_size, default=MIB,
                        help="size of a small file (default 1MiB)")
    parser.add_argument("--large-count", type=int, default=8, help="large files (default 8)")
    parser.add_argument("--large-size", type=parse_size, default=64 * MIB,
                        help="size of a large file (default 64MiB)")
    parser.add_argument("--big", type=parse_size, default=GIB,
                        help="size of the file for the RSS measurement; 0 skips it (default 1GiB)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="give up on a drain after this many seconds (default 120)")
    add_output_options(parser, "files, data directories, server logs")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be from 1 to 64")
    if args.small_count < 0 or args.large_count < 0 or args.small_count + args.large_count < 1:
        parser.error("the workload needs at least one file")
    if min(args.small_size, args.large_size) < 1:
        parser.error("file sizes must be at least 1 byte")
    if args.big < 0:
        parser.error("--big must be 0 or a size")
    return args


# -- moto -----------------------------------------------------------------------------------------


# -- workload -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchFile:
    path: str  # filestore path; the S3 key is f"{PREFIX}/{path}"
    local: Path
    size: int

    @property
    def key(self) -> str:
        return f"{PREFIX}/{self.path}"


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        out.writelines(random_blocks(size))


def make_files(root: Path, label: str, count: int, size: int) -> list[BenchFile]:
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        local = folder / f"{i:04d}.bin"
        write_random(local, size)
        files.append(BenchFile(f"bench/{label}/{i:04d}.bin", local, size))
    return files


def total_bytes(files: Sequence[BenchFile]) -> int:
    return sum(f.size for f in files)


def upload_path(size: int) -> str:
    """What filestore does with a file of `size` (remote/s3.py): `size > threshold` is multipart."""
    if size > MULTIPART_THRESHOLD:
        part = max(PART_SIZE, -(-size // MAX_PARTS))
        return f"multipart ({-(-size // part)} parts of {size_text(part)})"
    return "single put_object"


def observed_path(etag: str) -> str:
    """A multipart object's ETag is `"<md5 of part md5s>-<parts>"`."""
    match = re.search(r"-(\d+)\"?$", etag)
    return f"multipart ({match.group(1)} parts)" if match else "single put_object"


# -- reference: plain aioboto3 --------------------------------------------------------------------


def _read_part(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(offset)
        return source.read(length)


async def _reference_multipart(s3: Any, bucket: str, f: BenchFile) -> None:
    part_size = max(PART_SIZE, -(-f.size // MAX_PARTS))
    count = -(-f.size // part_size)
    created = await s3.create_multipart_upload(Bucket=bucket, Key=f.key,
                                               ContentType="application/octet-stream")
    upload_id = created["UploadId"]
    parts: list[dict[str, Any]] = [{} for _ in range(count)]
    slots = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def send(number: int) -> None:
        async with slots:
            offset = (number - 1) * part_size
            data = await asyncio.to_thread(_read_part, f.local, offset,
                                           min(part_size, f.size - offset))
            response = await s3.upload_part(Bucket=bucket, Key=f.key, UploadId=upload_id,
                                            PartNumber=number, Body=data)
            parts[number - 1] = {"PartNumber": number, "ETag": response["ETag"]}

    await asyncio.gather(*(send(n) for n in range(1, count + 1)))
    await s3.complete_multipart_upload(Bucket=bucket, Key=f.key, UploadId=upload_id,
                                       MultipartUpload={"Parts": parts})


async def _reference_upload(endpoint: str, bucket: str, files: Sequence[BenchFile],
                            concurrency: int) -> float:
    started = time.perf_counter()
    async with aio_client(endpoint) as s3:
        slots = asyncio.Semaphore(concurrency)

        async def upload(f: BenchFile) -> None:
            async with slots:
                if f.size > MULTIPART_THRESHOLD:
                    await _reference_multipart(s3, bucket, f)
                    return
                with open(f.local, "rb") as body:
                    await s3.put_object(Bucket=bucket, Key=f.key, Body=body,
                                        ContentLength=f.size,
                                        ContentType="application/octet-stream")

        await asyncio.gather(*(upload(f) for f in files))
        seconds = time.perf_counter() - started
    return seconds


@dataclasses.dataclass
class ReferenceRun:
    seconds: float
    mbps: float


def run_reference(moto: Moto, run: int, files: Sequence[BenchFile],
                  concurrency: int) -> ReferenceRun:
    bucket = moto.fresh_bucket(f"reference-{run}")
    seconds = asyncio.run(_reference_upload(moto.url, bucket, files, concurrency))
    check_bucket(moto, bucket, files, "reference")
    result = ReferenceRun(seconds, total_bytes(files) / seconds / 1e6)
    log(f"reference run {run}: {seconds:.2f} s, {result.mbps:,.1f} MB/s")
    return result


def check_bucket(moto: Moto, bucket: str, files: Sequence[BenchFile], who: str) -> None:
    found = moto.listing(bucket)
    wrong = [f.key for f in files if found.get(f.key) != f.size]
    if wrong:
        raise BenchError(f"{who}: {len(wrong)} of {len(files)} objects missing or of the wrong "
                         f"size in bucket {bucket}, e.g. {wrong[0]}")


# -- filestore ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Filestore:
    """One data directory and the `filestore` commands that use it."""

    data_dir: Path
    bucket: str
    moto_url: str
    concurrency: int
    log_path: Path
    token: str = ""

    def env(self, port: int, enabled: bool) -> dict[str, str]:
        return filestore_env(self.settings(port, enabled))

    def settings(self, port: int, enabled: bool) -> dict[str, str]:
        return {
            **filestore_settings(self.data_dir, port),
            "FILESTORE_UPLOAD__ENABLED": "true" if enabled else "false",
            "FILESTORE_UPLOAD__DELAY": "0s",
            "FILESTORE_UPLOAD__CONCURRENCY": str(self.concurrency),
            **remote_settings(f"s3://{self.bucket}/{PREFIX}", self.moto_url),
        }

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.sqlite3"

    def fetch_token(self) -> None:
        self.token = filestore_token(self.env(0, False))

    def server(self, enabled: bool) -> tuple[Process, int]:
        port = free_port()
        name = f"filestore serve (uploads {'enabled' if enabled else 'paused'})"
        return Process(name, [*filestore_command(), "serve"], self.log_path,
                       self.env(port, enabled), log_command=True), port


@contextlib.contextmanager
def serving(fs: Filestore, enabled: bool, wait: bool = True) -> Iterator[tuple[Process, int]]:
    """A running `filestore serve`, stopped on the way out whatever happens."""
    process, port = fs.server(enabled)
    with started(process, port if wait else None, POLL_SECONDS, PORT_TIMEOUT):
        yield process, port


def put_all(fs: Filestore, files: Sequence[BenchFile], concurrency: int) -> float:
    """PUT every file into a paused server; the seconds the PUTs took (for context)."""
    with serving(fs, enabled=False) as (_, port):
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(put_file, port, fs.token, f.path, f.local, f.size)
                           for f in files]:
                future.result()
        return time.perf_counter() - started


@dataclasses.dataclass
class Drain:
    seconds: float
    mbps: float
    port_open_s: float | None  # HTTP port accepting connections, from the spawn
    first_upload_s: float | None  # first file recorded as uploaded, from the spawn
    uploaded: int
    expected: int
    samples: int
    rss_peak_mib: float
    hwm_mib: float  # VmHWM at the end of the drain: the kernel's own peak, start-up included
    retried: dict[str, str]  # path -> last_error, for rows that needed more than one attempt
    failed: dict[str, str]  # path -> last_error, rows marked failed
    left_in_queue: int
    exit_status: int | None = None
    rss_idle_mib: float | None = None

    @property
    def rss_growth_mib(self) -> float | None:
        if self.rss_idle_mib is None:
            return None
        return self.rss_peak_mib - self.rss_idle_mib


class RegistryWatch:
    """Read-only polling of a live registry; tolerates the moments it cannot be read (the server
    is still creating or migrating it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def counters(self) -> dict[str, int] | None:
        try:
            if self.conn is None:
                if not self.path.exists():
                    return None
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.5,
                                            isolation_level=None)
            return dict(self.conn.execute("SELECT name, value FROM counters").fetchall())
        except sqlite3.Error:
            self.close()
            return None

    def troubled_rows(self) -> list[tuple[str, str, int, str | None]]:
        """(path, state, attempts, last_error) of queue rows that failed at least once."""
        if self.conn is None:
            return []
        try:
            return self.conn.execute(
                "SELECT path, state, attempts, last_error FROM queue WHERE attempts > 0"
            ).fetchall()
        except sqlite3.Error:
            return []

    def queue_rows(self) -> int:
        if self.conn is None:
            return -1
        return int(self.conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def stuck_rows(self, limit: int = 5) -> list[str]:
        """Queue rows still there, with the file's current version beside the row's: a row
        whose version is not the file's is never uploaded (the worker releases it as stale)."""
        if self.conn is None:
            return []
        try:
            rows = self.conn.execute(
                "SELECT q.path, q.op, q.version, f.version, q.state, q.attempts, q.last_error "
                "FROM queue q LEFT JOIN files f USING (path) ORDER BY q.not_before LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error:
            return []
        return [f"{path}: {op} of version {version} (file is at version {current}), {state}, "
                f"{attempts} attempt(s), last error {error!r}"
                for path, op, version, current, state, attempts, error in rows]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def drain(fs: Filestore, files: Sequence[BenchFile], timeout: float) -> Drain:
    """Start the server with uploads enabled and watch until every file is uploaded."""
    expected = len(files)
    watch = RegistryWatch(fs.registry_path)
    retried: dict[str, str] = {}
    failed: dict[str, str] = {}
    peak_kib = samples = hwm_kib = uploaded = 0
    port_open_s: float | None = None
    first_upload_s: float | None = None
    process, port = fs.server(enabled=True)
    process.start()
    try:
        tick = process.started_at
        while True:
            elapsed = time.monotonic() - process.started_at
            process.check_alive()
            status = mem_status(process.pid)
            if status is not None:
                peak_kib = max(peak_kib, status.rss_kib)
                samples += 1
            if port_open_s is None and port_open(port, PORT_TIMEOUT):
                port_open_s = time.monotonic() - process.started_at
            counters = watch.counters()
            if counters is not None:
                uploaded = counters.get("files.remote", 0)
                if uploaded and first_upload_s is None:
                    first_upload_s = elapsed
                for path, state, _, error in watch.troubled_rows():
                    (failed if state == "failed" else retried)[path] = error or ""
                if counters.get("files.local", -1) == 0 and uploaded == expected:
                    break
                if failed and uploaded + len(failed) >= expected:
                    log(f"{len(failed)} queue row(s) failed; not waiting for them")
                    break
            if elapsed > timeout:
                stuck = "\n".join(f"  {row}" for row in watch.stuck_rows())
                raise BenchError(f"the drain did not finish within {timeout:.0f}s "
                                 f"({uploaded} of {expected} uploaded); queue rows:\n{stuck}\n"
                                 f"server log:\n{process.log_tail()}")
            tick += POLL_SECONDS
            time.sleep(max(0.0, tick - time.monotonic()))
        seconds = elapsed
        final = mem_status(process.pid)
        if final is not None:
            hwm_kib = final.hwm_kib
            peak_kib = max(peak_kib, final.rss_kib)
        left = watch.queue_rows()
    finally:
        watch.close()
        exit_status = process.stop()
    return Drain(
        seconds=seconds, mbps=total_bytes(files) / seconds / 1e6, port_open_s=port_open_s,
        first_upload_s=first_upload_s, uploaded=uploaded, expected=expected, samples=samples,
        rss_peak_mib=peak_kib / KIB, hwm_mib=hwm_kib / KIB, retried=retried, failed=failed,
        left_in_queue=left, exit_status=exit_status,
    )


def leftover_intents(registry: Path) -> int:
    """Intent rows after a clean stop: each one is a PUT whose commit did not drop its intent,
    and the next start's crash recovery will act on it."""
    with contextlib.closing(sqlite3.connect(f"file:{registry}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0])


def idle_rss_mib(fs: Filestore, settle: float = 1.0) -> float:
    """VmRSS of a freshly started, paused server with nothing to do: where a drain starts from."""
    with serving(fs, enabled=False) as (process, port):
        code, _ = http_request(port, "GET", "/healthz", timeout=30)
        if code != 200:
            raise BenchError(f"GET /healthz -> {code}")
        time.sleep(settle)
        readings = []
        for _ in range(5):
            status = mem_status(process.pid)
            if status is not None:
                readings.append(status.rss_kib)
            time.sleep(POLL_SECONDS)
    if not readings:
        raise BenchError("could not read the idle server's RSS")
    return statistics.median(readings) / KIB


@dataclasses.dataclass
class FilestoreRun:
    put_seconds: float
    drain: Drain
    paths: dict[str, str]  # size label -> upload path observed in the bucket
    problems: list[str]


def run_filestore(moto: Moto, work: Path, label: str, files: Sequence[BenchFile],
                  concurrency: int, timeout: float, measure_idle: bool) -> FilestoreRun:
    bucket = moto.fresh_bucket(label)
    fs = Filestore(work / f"data-{label}", bucket, moto.url, concurrency,
                   work / f"filestore-{label}.log")
    fs.fetch_token()
    put_seconds = put_all(fs, files, concurrency)
    leftover = leftover_intents(fs.registry_path)
    log(f"{label}: PUT {len(files)} files over HTTP in {put_seconds:.2f} s "
        f"({total_bytes(files) / put_seconds / 1e6:,.1f} MB/s), uploads paused")
    idle = idle_rss_mib(fs) if measure_idle else None
    result = drain(fs, files, timeout)
    result.rss_idle_mib = idle
    log(f"{label}: drained {result.uploaded}/{result.expected} in {result.seconds:.2f} s "
        f"({result.mbps:,.1f} MB/s); port open at {result.port_open_s or 0:.2f} s, first upload "
        f"at {result.first_upload_s or 0:.2f} s; RSS peak {result.rss_peak_mib:.1f} MiB")
    if not result.failed:
        check_bucket(moto, bucket, files, label)
    paths: dict[str, str] = {}
    for f in files:
        name = size_text(f.size)
        if name not in paths and f.path not in result.failed:
            paths[name] = observed_path(moto.etag(bucket, f.key))
    problems = [f"{label}: log: {line}" for line in log_problems(fs.log_path, WARNING_MARKS)]
    if leftover:
        problems.append(f"{label}: {leftover} intent row(s) left in the registry after "
                        f"{len(files)} acknowledged PUTs and a clean stop")
    problems += [f"{label}: queue row {path} retried: {err}" for path, err in
                 result.retried.items()]
    problems += [f"{label}: queue row {path} FAILED: {err}" for path, err in result.failed.items()]
    if result.left_in_queue > 0:
        problems.append(f"{label}: {result.left_in_queue} queue row(s) left after the drain")
    if result.exit_status not in CLEAN_EXIT:
        problems.append(f"{label}: the uploading server exited with status {result.exit_status}")
    return FilestoreRun(put_seconds, result, paths, problems)


# -- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0],
            **package_versions("filestore", "aioboto3", "aiobotocore", "botocore", "aiohttp",
                               "moto", "uvicorn", "starlette")}


def report(
    args: argparse.Namespace, files: Sequence[BenchFile], refs: list[ReferenceRun],
    fs_runs: list[FilestoreRun], big_runs: list[FilestoreRun], info: dict[str, Any],
) -> dict[str, Any]:
    """Print the tables, the configuration and the problems; the same as a JSON-ready dict."""
    total = total_bytes(files)
    ref_mbps = statistics.median(r.mbps for r in refs)
    fs_mbps = statistics.median(r.drain.mbps for r in fs_runs)
    ratio = fs_mbps / ref_mbps
    sizes = sorted({f.size for f in files})
    workload = " + ".join(
        f"{sum(1 for f in files if f.size == s)} x {size_text(s)}" for s in sizes)

    print()
    print(f"Upload to moto_server on 127.0.0.1: {workload} = {total / 1e6:,.1f} MB "
          f"({len(files)} files), concurrency {args.concurrency}, {args.runs} run(s), median")
    print(versions_text(info["versions"]) + f"; {info['cpus']} CPUs")
    print()
    rows = [["target", "wall s", "MB/s", "files/s", "MB/s of each run", "s of each run"]]
    rows.append(["reference (aioboto3)", f"{statistics.median(r.seconds for r in refs):.2f}",
                 f"{ref_mbps:,.1f}",
                 f"{len(files) / statistics.median(r.seconds for r in refs):,.1f}",
                 fmt_runs([r.mbps for r in refs]), fmt_runs([r.seconds for r in refs], 2)])
    fs_seconds = statistics.median(r.drain.seconds for r in fs_runs)
    rows.append(["filestore drain", f"{fs_seconds:.2f}", f"{fs_mbps:,.1f}",
                 f"{len(files) / fs_seconds:,.1f}", fmt_runs([r.drain.mbps for r in fs_runs]),
                 fmt_runs([r.drain.seconds for r in fs_runs], 2)])
    print_rows(rows)
    per_run = [f.drain.mbps / r.mbps for f, r in zip(fs_runs, refs, strict=True)]
    print(f"ratio filestore/reference: {ratio:.2f} ({verdict(ratio >= TARGET_RATIO)} the target "
          f">= {TARGET_RATIO}); per run: {fmt_runs(per_run, 2)}")
    drains = [r.drain for r in fs_runs]
    # The same drain with the interpreter's start (imports, S3 client) left out, as the
    # reference's in-process run leaves it out: the queue's own throughput.
    ready_mbps = statistics.median(
        total / (d.seconds - (d.port_open_s or 0)) / 1e6 for d in drains)
    ready_ratio = ready_mbps / ref_mbps
    print(f"from ready (port open): filestore {ready_mbps:,.1f} MB/s, ratio {ready_ratio:.2f} "
          f"({verdict(ready_ratio >= TARGET_RATIO)} the target >= {TARGET_RATIO})")
    print(f"filestore drain, from the spawn: port open at "
          f"{statistics.median(d.port_open_s or 0 for d in drains):.2f} s, first upload recorded "
          f"at {statistics.median(d.first_upload_s or 0 for d in drains):.2f} s; "
          f"RSS peak {statistics.median(d.rss_peak_mib for d in drains):.1f} MiB")
    put_mbps = [total / r.put_seconds / 1e6 for r in fs_runs]
    print(f"(context, not measured against anything: the HTTP PUTs into the paused server ran "
          f"at {fmt_runs(put_mbps)} MB/s)")
    print("upload path per size (expected from filestore's rule `size > threshold`; observed "
          "from the objects' ETags):")
    for size in sizes:
        observed = fs_runs[0].paths.get(size_text(size), "?")
        print(f"  {size_text(size):>8}: expected {upload_path(size)}, observed {observed}")

    big: dict[str, Any] | None = None
    if big_runs:
        bd = [r.drain for r in big_runs]
        peak = statistics.median(d.rss_peak_mib for d in bd)
        growth = statistics.median(d.rss_growth_mib or 0 for d in bd)
        idle = statistics.median(d.rss_idle_mib or 0 for d in bd)
        print()
        print(f"Memory while uploading one {size_text(args.big)} file "
              f"({big_runs[0].paths.get(size_text(args.big), '?')}), VmRSS of the serve "
              f"process every {POLL_SECONDS * 1000:.0f} ms:")
        rows = [["idle RSS MiB", "peak RSS MiB", "growth MiB", "VmHWM MiB", "samples", "drain s",
                 "MB/s", "peak of each run"]]
        rows.append([f"{idle:.1f}", f"{peak:.1f}", f"{growth:.1f}",
                     f"{statistics.median(d.hwm_mib for d in bd):.1f}",
                     str(int(statistics.median(d.samples for d in bd))),
                     f"{statistics.median(d.seconds for d in bd):.2f}",
                     f"{statistics.median(d.mbps for d in bd):,.1f}",
                     fmt_runs([d.rss_peak_mib for d in bd])])
        print_rows(rows)
        print(f"peak {peak:.1f} MiB {verdict(peak < TARGET_PEAK_MIB)} the target < "
              f"{TARGET_PEAK_MIB:.0f} MiB (idle: a fresh paused server with nothing to do; VmHWM "
              "includes start-up)")
        big = {"size": args.big, "idle_rss_mib": idle, "peak_rss_mib": peak,
               "growth_mib": growth, "target_peak_mib": TARGET_PEAK_MIB,
               "path": big_runs[0].paths.get(size_text(args.big)),
               "runs": [dataclasses.asdict(r.drain) for r in big_runs]}

    print()
    print("configuration:")
    print(f"  command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]) or 'bench/upload.py'}")
    print(f"  moto_server {info['moto_url']} (reset before every measurement, fresh bucket)")
    print(f"  client (reference and filestore): {info['client_config']}")
    print(f"  reference: put_object(Body=<open file>, ContentLength, ContentType) for files <= "
          f"{size_text(MULTIPART_THRESHOLD)}, multipart ({size_text(PART_SIZE)} parts, "
          f"{PARTS_IN_FLIGHT} in flight) above; asyncio.Semaphore({args.concurrency})")
    print("  filestore env (uploads paused for the PUTs, then enabled for the drain):")
    for key, value in info["filestore_env"].items():
        print(f"    {key}={value}")
    print(f"  filestore defaults in force: remote.multipart_threshold "
          f"{size_text(MULTIPART_THRESHOLD)}, remote.part_size {size_text(PART_SIZE)}, "
          f"remote.max_connections {MAX_CONNECTIONS}, upload.keep_local false")

    problems = [p for r in [*fs_runs, *big_runs] for p in r.problems]
    print_problems(problems, "problems seen in filestore", "no warnings or errors in its output, "
                   "no retried or failed queue rows, queue empty after every drain")

    return {
        "config": {**args_json(args), **info},
        "workload": {"files": len(files), "bytes": total, "description": workload},
        "reference": {"mbps": ref_mbps, "runs": [dataclasses.asdict(r) for r in refs]},
        "filestore": {"mbps": fs_mbps, "ratio": ratio, "target_ratio": TARGET_RATIO,
                      "mbps_from_ready": ready_mbps, "ratio_from_ready": ready_ratio,
                      "put_mbps": put_mbps, "paths": fs_runs[0].paths,
                      "runs": [dataclasses.asdict(r.drain) for r in fs_runs]},
        "big": big,
        "problems": problems,
    }


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.monotonic()
    log(f"generating the workload in {work}")
    files = (make_files(work / "files", "small", args.small_count, args.small_size)
             + make_files(work / "files", "large", args.large_count, args.large_size))
    big_files = make_files(work / "files", "big", 1, args.big) if args.big else []
    log(f"generated {len(files) + len(big_files)} files in {time.monotonic() - started:.1f} s")

    moto = Moto(work)
    refs: list[ReferenceRun] = []
    fs_runs: list[FilestoreRun] = []
    big_runs: list[FilestoreRun] = []
    try:
        moto.start(POLL_SECONDS, PORT_TIMEOUT)
        for run_number in range(1, args.runs + 1):
            refs.append(run_reference(moto, run_number, files, args.concurrency))
            fs_runs.append(run_filestore(moto, work, f"filestore-{run_number}", files,
                                         args.concurrency, args.drain_timeout, False))
            if big_files:
                big_runs.append(run_filestore(moto, work, f"big-{run_number}", big_files,
                                              args.concurrency, args.drain_timeout, True))
    finally:
        moto.stop()

    example = Filestore(Path("<tmp>/data-<label>"), "<bucket>", moto.url, args.concurrency,
                        Path("/dev/null"))
    shown_env = dict(example.settings(0, True))
    shown_env["FILESTORE_SERVER__PORT"] = "<free port>"
    shown_env["FILESTORE_UPLOAD__ENABLED"] = "false, then true"
    info = {
        "versions": versions(),
        "cpus": nproc(),
        "moto_url": moto.url,
        "client_config": CLIENT_CONFIG_TEXT,
        "filestore_env": shown_env,
    }
    results = report(args, files, refs, fs_runs, big_runs, info)
    results["elapsed_s"] = time.monotonic() - started
    print(f"\n(whole benchmark: {results['elapsed_s']:.0f} s)")
    write_json(args.json, results, default=str)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench/upload.py", "filestore-bench-upload-", args.keep,
                    lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
