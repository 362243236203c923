"""S3 endpoint benchmark: boto3 through filestore's S3 endpoint against the same bytes through
`/files/`, and the memory of an `aws s3 cp` of a large file.

What is measured
    One `filestore serve` (1 worker, as the other benchmarks run it; the embedded default
    remote; `upload.enabled = false`, so no upload competes with the requests) with its S3
    endpoint on a free port (`FILESTORE_S3__PORT`). The administrator's key pair comes from
    `filestore s3 keys --json`, the bearer token for `/files/` PUTs from `filestore token`, both
    run with the server's environment.

    1. Objects of 1 KiB and 32 MiB (random bytes), PUT and then GET, one request after another:
       - S3 endpoint: one boto3 client, reused throughout (endpoint http://127.0.0.1:PORT,
         path-style, region us-east-1, signature s3v4, request_checksum_calculation and
         response_checksum_validation "when_required": no CRC32 on top of what S3 requires,
         filestore's own client settings and what keeps the comparison to the bytes and the
         signature; over plain http botocore still signs the payload, i.e. it SHA-256-hashes
         every PUT body into `x-amz-content-sha256`, which the server checks against the digest
         it computes for the registry anyway), `put_object(Body=bytes)` and
         `get_object()["Body"]` read in 1 MiB chunks;
       - reference: `/files/` with urllib3's PoolManager (the HTTP library botocore itself
         sends with), one pool reused, PUT with the bearer token, GET without one, the body
         read in 1 MiB chunks.
       Each key is PUT once (a new file) and then read back once (page-cache hot). For each
       size there are --rounds rounds of --small-count (1 KiB) or --large-count (32 MiB) PUTs
       and then as many GETs per side, the sides' order alternating from round to round; the
       figure of each side is the median of its rounds, the ratio S3 / `/files/` is taken from
       those medians (each round's is listed too). 1 KiB: operations per second; 32 MiB: MB/s
       (10^6 bytes of payload per second). Targets: S3 endpoint >= 0.7x of `/files/` at 1 KiB
       (the SigV4 check included), >= 0.9x at 32 MiB. Before timing, one object of each size is
       PUT and read back through each side and its SHA-256 compared; every timed GET must return
       the object's length. The CPU seconds of this process (the client) and of the server
       during each loop are listed per operation: they tell the client's share of a gap from the
       server's.
    2. `aws s3 cp` of a --big file (1 GiB of random bytes, in the scratch directory) up to the
       endpoint and back down (the AWS CLI's defaults: multipart and ranged GETs, 8 MiB parts, 10
       threads; it sends each part's CRC32 in `x-amz-checksum-crc32`, which the server checks
       too), each timed, while VmRSS of the server process and any children it has is sampled
       every 0.1 s; growth = peak - the reading just before the copy (VmHWM, reset
       through /proc/PID/clear_refs before each copy, catches spikes between samples: the
       target is held to the larger of the two). Target: < 64 MiB. The downloaded file's
       SHA-256 must equal the source's.

Why
    An S3 client should not pay much for going through the S3 dialect rather than `/files/`:
    the same bytes, the same store, the same HTTP library underneath, so what is left is the
    signature, the S3 routing and botocore's own per-request work. A large copy must stream.

Usage
    python bench/s3api.py [--quick] [--small-count 1000] [--large-count 5] [--rounds 3]
                          [--big 1GiB] [--json PATH] [--keep]

    --quick: 200 x 1 KiB and 2 x 32 MiB per round, 2 rounds, a 256 MiB copy. Needs boto3 and
    urllib3 (the `test` extra) and the AWS CLI (`aws` next to this interpreter, in
    .venv-awscli/bin, or on PATH; --aws names another). Everything binds 127.0.0.1; the scratch
    directory is on /dev/shm when writable (the data directory, the big file and its copy: about
    4 x --big at the peak). The default run takes two to three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
import urllib3
from benchlib import (
    ERROR_MARKS,
    GIB,
    HOST,
    KIB,
    MIB,
    BenchError,
    Process,
    add_output_options,
    apply_profile,
    args_json,
    busy_problems,
    cpu_busy,
    cpu_seconds,
    filestore_command,
    filestore_env,
    filestore_settings,
    filestore_token,
    fmt_runs,
    free_port,
    log,
    log_problems,
    mem_status,
    nproc,
    package_versions,
    parse_size,
    print_problems,
    print_rows,
    random_blocks,
    run_main,
    size_text,
    started,
    verdict,
    versions_text,
    write_json,
)
from botocore.config import Config

BUCKET = "bench"
REGION = "us-east-1"
SMALL, LARGE = KIB, 32 * MIB
TARGETS = {SMALL: 0.7, LARGE: 0.9}  # S3 endpoint / `/files/`, per size
RSS_TARGET_MIB = 64.0
SAMPLE_SECONDS = 0.1
CHUNK = MIB  # GET bodies are read in pieces of this size, on both sides
CONTENT_TYPE = "application/octet-stream"
S3_SIDE, FILES_SIDE = "s3", "files"
SIDE_NAMES = {S3_SIDE: "S3 endpoint (boto3)", FILES_SIDE: "/files/ (urllib3)"}
CLIENT_SETTINGS = (
    "boto3 client: endpoint_url http://127.0.0.1:PORT, region us-east-1, signature_version s3v4, "
    "addressing_style path, request_checksum_calculation when_required, "
    "response_checksum_validation when_required, retries total_max_attempts 1; one client")
CHECKSUM_WHY = (
    "request_checksum_calculation=when_required: boto3 adds no CRC32 where S3 does not require "
    "one (PutObject), as filestore's own S3 client is set; what remains is what S3 itself asks "
    "for. Over plain http botocore signs the payload anyway (x-amz-content-sha256 = the body's "
    "SHA-256), so the client hashes every PUT body once more than the /files/ reference does; "
    "the server computes one SHA-256 of the body either way (for the registry) and compares the "
    "signed one with it")

QUICK = {"small_count": 200, "large_count": 2, "rounds": 2, "big": 256 * MIB}
FULL = {"small_count": 1000, "large_count": 5, "rounds": 3, "big": GIB}


# -- arguments ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/s3api.py",
        description="PUT and GET of 1 KiB and 32 MiB objects through filestore's S3 endpoint "
                    "with boto3 vs /files/ with urllib3; `aws s3 cp` of a large file and the "
                    "server's peak RSS growth.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="a short pass: 200 x 1 KiB, 2 x 32 MiB per round, 2 rounds, "
                             "a 256 MiB copy")
    parser.add_argument("--small-count", type=int, default=None,
                        help="1 KiB PUTs (and GETs) per side per round (default 1000)")
    parser.add_argument("--large-count", type=int, default=None,
                        help="32 MiB PUTs (and GETs) per side per round (default 5)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per size, the sides' order alternating (default 3)")
    parser.add_argument("--big", type=parse_size, default=None,
                        help="size of the file `aws s3 cp` copies up and down (default 1GiB; "
                             "0 skips the copy)")
    parser.add_argument("--aws", default=None,
                        help="the AWS CLI (default: next to this interpreter, "
                             ".venv-awscli/bin/aws, or on PATH)")
    add_output_options(parser, "data directory, the big file and its copy, server log")
    args = parser.parse_args(argv)
    apply_profile(args, QUICK, FULL)
    if args.small_count < 1 or args.large_count < 1 or args.rounds < 1:
        parser.error("--small-count, --large-count and --rounds must be at least 1")
    if args.big and args.big < 16 * MIB:
        parser.error("--big must be 0 or at least 16MiB (so that the CLI goes multipart)")
    return args


def find_aws(given: str | None) -> str:
    if given:
        return given
    here = Path(sys.executable).with_name("aws")
    repo_cli = Path(__file__).resolve().parent.parent / ".venv-awscli" / "bin" / "aws"
    for candidate in (here, repo_cli):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("aws")
    if found is None:
        raise BenchError("the AWS CLI was not found (next to this interpreter, in "
                         ".venv-awscli/bin or on PATH); pass --aws PATH")
    return found


# -- the server -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    data_dir: Path
    log_path: Path
    port: int = dataclasses.field(default_factory=free_port)
    s3_port: int = dataclasses.field(default_factory=free_port)

    def settings(self) -> dict[str, str]:
        return {
            **filestore_settings(self.data_dir, self.port),
            "FILESTORE_SERVER__WORKERS": "1",
            "FILESTORE_S3__PORT": str(self.s3_port),
            "FILESTORE_UPLOAD__ENABLED": "false",
        }

    def env(self) -> dict[str, str]:
        return filestore_env(self.settings())

    def process(self) -> Process:
        return Process("filestore", [*filestore_command(), "serve"], self.log_path, self.env(),
                       log_command=True)

    def s3_keys(self) -> tuple[str, str]:
        result = subprocess.run([*filestore_command(), "s3", "keys", "--json"], env=self.env(),
                                capture_output=True, text=True, timeout=60, check=False)
        try:
            pair = json.loads(result.stdout)
            return str(pair["access_key_id"]), str(pair["secret_access_key"])
        except (ValueError, KeyError, TypeError):
            raise BenchError(f"`filestore s3 keys --json` failed ({result.returncode}): "
                             f"{result.stderr.strip() or result.stdout.strip()}") from None


# -- the two sides --------------------------------------------------------------------------------


class S3Client:
    """The S3 endpoint through one boto3 client."""

    def __init__(self, endpoint: str, key_id: str, secret: str) -> None:
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          retries={"total_max_attempts": 1, "mode": "standard"},
                          connect_timeout=10, read_timeout=120))
        self.put_headers: dict[str, str] = {}  # those of the last PutObject sent
        self.client.meta.events.register("before-send.s3.PutObject", self._note)

    def _note(self, request: Any, **_: Any) -> None:
        self.put_headers = {k.lower(): v.decode() if isinstance(v, bytes) else str(v)
                            for k, v in request.headers.items()}

    @staticmethod
    def key(path: str) -> str:
        return path.removeprefix(f"{BUCKET}/")

    def create_bucket(self) -> None:
        self.client.create_bucket(Bucket=BUCKET)

    def put(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=self.key(path), Body=data,
                               ContentType=CONTENT_TYPE)

    def get(self, path: str, digest: Any = None) -> int:
        body = self.client.get_object(Bucket=BUCKET, Key=self.key(path))["Body"]
        received = 0
        for chunk in body.iter_chunks(CHUNK):
            received += len(chunk)
            if digest is not None:
                digest.update(chunk)
        body.close()
        return received

    def delete(self, path: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=self.key(path))


class FilesClient:
    """`/files/` through one urllib3 PoolManager."""

    def __init__(self, port: int, token: str) -> None:
        self.pool = urllib3.PoolManager(retries=False,
                                        timeout=urllib3.Timeout(connect=10, read=120))
        self.base = f"http://{HOST}:{port}/files/"
        self.auth = {"Authorization": f"Bearer {token}"}
        self.put_headers = {**self.auth, "Content-Type": CONTENT_TYPE}

    def url(self, path: str) -> str:
        return self.base + urllib.parse.quote(path)

    def put(self, path: str, data: bytes) -> None:
        response = self.pool.request("PUT", self.url(path), body=data, headers=self.put_headers)
        if response.status not in (200, 201):
            raise BenchError(f"PUT /files/{path} -> {response.status}: {response.data[:300]!r}")

    def get(self, path: str, digest: Any = None) -> int:
        response = self.pool.request("GET", self.url(path), preload_content=False)
        try:
            if response.status != 200:
                raise BenchError(f"GET /files/{path} -> {response.status}: "
                                 f"{response.read()[:300]!r}")
            received = 0
            for chunk in response.stream(CHUNK):
                received += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            return received
        finally:
            response.release_conn()

    def delete(self, path: str) -> None:
        response = self.pool.request("DELETE", self.url(path), headers=self.auth)
        if response.status not in (200, 204):
            raise BenchError(f"DELETE /files/{path} -> {response.status}")


Client = S3Client | FilesClient


# -- the request loops ----------------------------------------------------------------------------


@dataclasses.dataclass
class Loop:
    """One timed loop: `count` sequential operations of one kind by one side."""

    side: str
    size: int
    op: str
    round: int
    count: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float

    @property
    def figure(self) -> float:
        """ops/s for 1 KiB, MB/s for larger objects."""
        per_second = self.count / self.seconds
        return per_second if self.size == SMALL else per_second * self.size / 1e6


def timed(side: str, size: int, op: str, round_number: int, paths: Sequence[str],
          call: Callable[[str], object], server_pid: int) -> Loop:
    cpu0, server0 = time.process_time(), cpu_seconds(server_pid)
    start = time.perf_counter()
    for path in paths:
        call(path)
    seconds = time.perf_counter() - start
    return Loop(side, size, op, round_number, len(paths), seconds, time.process_time() - cpu0,
                cpu_seconds(server_pid) - server0)


def check_round_trip(clients: dict[str, Client], size: int, data: bytes) -> None:
    """One object of `size` PUT and read back through each side, its SHA-256 compared (and
    botocore's models, the connections and the server's first-request work out of the way)."""
    want = hashlib.sha256(data).hexdigest()
    for side, client in clients.items():
        for n in range(3 if size == SMALL else 1):
            path = f"{BUCKET}/{side}/warmup/{size_text(size).replace(' ', '')}-{n}"
            client.put(path, data)
            digest = hashlib.sha256()
            got = client.get(path, digest)
            if got != size or digest.hexdigest() != want:
                raise BenchError(f"{SIDE_NAMES[side]}: {path} came back as {got} bytes with "
                                 f"SHA-256 {digest.hexdigest()}, not {size} bytes {want}")


def measure_size(clients: dict[str, Client], size: int, count: int, rounds: int,
                 server_pid: int) -> list[Loop]:
    data = b"".join(random_blocks(size))
    check_round_trip(clients, size, data)
    label = size_text(size).replace(" ", "")
    loops: list[Loop] = []
    for round_number in range(rounds):
        order = [S3_SIDE, FILES_SIDE] if round_number % 2 == 0 else [FILES_SIDE, S3_SIDE]
        for side in order:
            client = clients[side]
            paths = [f"{BUCKET}/{side}/{label}/r{round_number}/{n:06d}" for n in range(count)]

            def put(path: str, client: Client = client) -> None:
                client.put(path, data)

            def get(path: str, client: Client = client, name: str = SIDE_NAMES[side]) -> None:
                got = client.get(path)
                if got != size:
                    raise BenchError(f"{name}: GET {path} returned {got} bytes, not {size}")

            put_loop = timed(side, size, "PUT", round_number, paths, put, server_pid)
            get_loop = timed(side, size, "GET", round_number, paths, get, server_pid)
            loops += [put_loop, get_loop]
            for loop in (put_loop, get_loop):
                log(f"{label} {loop.op} round {round_number + 1}/{rounds}, {SIDE_NAMES[side]}: "
                    f"{loop.count} in {loop.seconds:.2f} s, {loop.figure:,.1f} "
                    f"{unit(size)}")
            if size != SMALL:  # keep the scratch directory small
                for path in paths:
                    client.delete(path)
    return loops


def unit(size: int) -> str:
    return "ops/s" if size == SMALL else "MB/s"


def sha256_seconds(size: int) -> float:
    """How long one SHA-256 of `size` bytes takes here (the best of 3): what botocore adds to
    every PUT over http to sign the payload."""
    data = b"\0" * size
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        best = min(best, time.perf_counter() - start)
    return best


# -- aws s3 cp and memory -------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid`'s children, their children and so on (from /proc/PID/task/TID/children)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            stack += children
    return found


def tree_rss_kib(pid: int) -> int:
    total = 0
    for member in (pid, *descendants(pid)):
        status = mem_status(member)
        if status is not None:
            total += status.rss_kib
    return total


def reset_hwm(pid: int) -> bool:
    """VmHWM back to the current VmRSS (write 5 to /proc/PID/clear_refs); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """VmRSS of a process tree every SAMPLE_SECONDS in a thread: the peak and the count."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
            self.samples += 1
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))


@dataclasses.dataclass
class Copy:
    direction: str  # "up" or "down"
    size: int
    seconds: float
    baseline_mib: float
    peak_mib: float
    samples: int
    hwm_growth_mib: float | None  # VmHWM after - VmRSS before (the main process), if reset

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.baseline_mib

    @property
    def worst_mib(self) -> float:
        """The growth the target is held to: sampled, or VmHWM's if that saw a higher peak."""
        return max(self.growth_mib, self.hwm_growth_mib or 0.0)

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / 1e6


def aws_env(work: Path, key_id: str, secret: str) -> dict[str, str]:
    """This process's environment without AWS_* variables, plus the key pair and a config file
    that asks for path-style addressing."""
    config = work / "aws-config"
    config.write_text(f"[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**base, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-credentials-none"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def aws_copy(aws: str, env: dict[str, str], endpoint: str, source: str, target: str,
             direction: str, size: int, server_pid: int) -> Copy:
    argv = [aws, "--endpoint-url", endpoint, "s3", "cp", source, target, "--only-show-errors"]
    time.sleep(0.5)  # let the allocator settle after the previous work
    baseline = tree_rss_kib(server_pid)
    hwm_reset = reset_hwm(server_pid)
    rss_before = mem_status(server_pid)
    start = time.perf_counter()
    with RssSampler(server_pid) as sampler:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800,
                                check=False)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise BenchError(f"`aws s3 cp {source} {target}` failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-1000:]}")
    after = mem_status(server_pid)
    hwm_growth = None
    if hwm_reset and rss_before is not None and after is not None:
        hwm_growth = (after.hwm_kib - rss_before.rss_kib) / KIB
    copy = Copy(direction, size, seconds, baseline / KIB, sampler.peak_kib / KIB,
                sampler.samples, hwm_growth)
    log(f"aws s3 cp {direction}: {size_text(size)} in {seconds:.2f} s ({copy.mbps:,.1f} MB/s), "
        f"server RSS {copy.baseline_mib:.1f} -> peak {copy.peak_mib:.1f} MiB "
        f"(+{copy.growth_mib:.1f} MiB, {copy.samples} samples)")
    return copy


def make_big_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`; their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for block in random_blocks(size):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def measure_copies(aws: str, work: Path, server: Server, key_id: str, secret: str,
                   size: int, server_pid: int) -> tuple[list[Copy], str, str]:
    source, back = work / "big.bin", work / "big-back.bin"
    log(f"writing {size_text(size)} of random bytes to {source}")
    want = make_big_file(source, size)
    env = aws_env(work, key_id, secret)
    endpoint = f"http://{HOST}:{server.s3_port}"
    target = f"s3://{BUCKET}/aws/big.bin"
    up = aws_copy(aws, env, endpoint, str(source), target, "up", size, server_pid)
    stored = server.data_dir / "files" / BUCKET / "aws" / "big.bin"
    if not stored.is_file() or stored.stat().st_size != size:
        raise BenchError(f"after the upload {stored} is not a file of {size} bytes")
    source.unlink()  # room on the scratch filesystem; its digest is known
    down = aws_copy(aws, env, endpoint, target, str(back), "down", size, server_pid)
    got = file_sha256(back)
    back.unlink()
    if got != want:
        raise BenchError(f"the downloaded file's SHA-256 is {got}, the source's {want}")
    version = subprocess.run([aws, "--version"], env=env, capture_output=True, text=True,
                             check=False)
    return [up, down], want, (version.stdout or version.stderr).strip()


# -- report ---------------------------------------------------------------------------------------


def median_figure(loops: Sequence[Loop], side: str, size: int, op: str) -> float:
    return statistics.median(x.figure for x in loops
                             if x.side == side and x.size == size and x.op == op)


def per_op_ms(loops: Sequence[Loop], side: str, size: int, op: str) -> dict[str, float]:
    chosen = [x for x in loops if x.side == side and x.size == size and x.op == op]
    count = sum(x.count for x in chosen)
    return {name: 1000 * sum(getattr(x, attr) for x in chosen) / count
            for name, attr in (("wall", "seconds"), ("client_cpu", "client_cpu_s"),
                               ("server_cpu", "server_cpu_s"))}


def figure_text(value: float, size: int) -> str:
    return f"{value:,.0f} ops/s" if size == SMALL else f"{value:,.1f} MB/s"


def report(args: argparse.Namespace, loops: list[Loop], copies: list[Copy],
           info: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    print()
    print(f"S3 endpoint (boto3) vs /files/ (urllib3), one filestore serve worker, sequential "
          f"requests on one connection each; median of {args.rounds} round(s) per side")
    print(f"{versions_text(info['versions'])}; {info['cpus']} CPUs")
    print()
    rows = [["size", "op", "count", SIDE_NAMES[S3_SIDE], SIDE_NAMES[FILES_SIDE], "ratio",
             "target", "verdict", "ratio of each round"]]
    comparisons: list[dict[str, Any]] = []
    for size, count in ((SMALL, args.small_count), (LARGE, args.large_count)):
        for op in ("PUT", "GET"):
            s3 = median_figure(loops, S3_SIDE, size, op)
            ref = median_figure(loops, FILES_SIDE, size, op)
            ratio = s3 / ref
            target = TARGETS[size]
            per_round = [
                a.figure / b.figure for a, b in zip(
                    [x for x in loops if (x.side, x.size, x.op) == (S3_SIDE, size, op)],
                    [x for x in loops if (x.side, x.size, x.op) == (FILES_SIDE, size, op)],
                    strict=True)]
            rows.append([size_text(size), op, f"{count} x {args.rounds}", figure_text(s3, size),
                         figure_text(ref, size), f"{ratio:.2f}x", f">= {target}x",
                         "met" if ratio >= target else "MISSED", fmt_runs(per_round, 2)])
            comparisons.append({"size": size, "op": op, "unit": unit(size), "s3": s3,
                                "files": ref, "ratio": ratio, "target": target,
                                "met": ratio >= target, "ratio_per_round": per_round,
                                "s3_ms_per_op": per_op_ms(loops, S3_SIDE, size, op),
                                "files_ms_per_op": per_op_ms(loops, FILES_SIDE, size, op)})
    print_rows(rows)

    print()
    print("Per operation, all rounds (ms): wall time, CPU of this process (the client), CPU of "
          "the server (all its threads)")
    rows = [["size", "op", "side", "wall", "client CPU", "server CPU"]]
    for c in comparisons:
        for side, key in ((S3_SIDE, "s3_ms_per_op"), (FILES_SIDE, "files_ms_per_op")):
            ms = c[key]
            rows.append([size_text(c["size"]), c["op"], SIDE_NAMES[side], f"{ms['wall']:.3f}",
                         f"{ms['client_cpu']:.3f}", f"{ms['server_cpu']:.3f}"])
        s3_ms, ref_ms = c["s3_ms_per_op"], c["files_ms_per_op"]
        rows.append([size_text(c["size"]), c["op"], "S3 - /files/",
                     *(f"{s3_ms[k] - ref_ms[k]:+.3f}" for k in ("wall", "client_cpu",
                                                                 "server_cpu"))])
    print_rows(rows)
    large_put = next(c for c in comparisons if c["size"] == LARGE and c["op"] == "PUT")
    hash_ms = info["client_sha256_ms"]
    print(f"payload signing: boto3's PutObject sent x-amz-content-sha256: "
          f"{info['put_content_sha256']}; one SHA-256 of {size_text(LARGE)} takes "
          f"{hash_ms:.1f} ms here, {hash_ms / large_put['s3_ms_per_op']['wall']:.0%} of an S3 "
          f"PUT's wall time (the server hashes the body once on either side: the S3 PUT's server "
          f"CPU is {large_put['s3_ms_per_op']['server_cpu']:.1f} ms, the /files/ PUT's "
          f"{large_put['files_ms_per_op']['server_cpu']:.1f} ms)")

    big: dict[str, Any] | None = None
    if copies:
        print()
        print(f"aws s3 cp of {size_text(copies[0].size)} ({info.get('aws_version', '?')}, its "
              f"defaults: 8 MiB parts, 10 threads, a CRC32 per part over http), server VmRSS "
              f"(and any children) every {SAMPLE_SECONDS * 1000:.0f} ms")
        rows = [["direction", "wall s", "MB/s", "RSS before MiB", "peak MiB", "growth MiB",
                 "VmHWM growth MiB", "samples", "target", "verdict"]]
        for cp in copies:
            rows.append([cp.direction, f"{cp.seconds:.2f}", f"{cp.mbps:,.1f}",
                         f"{cp.baseline_mib:.1f}", f"{cp.peak_mib:.1f}", f"{cp.growth_mib:.1f}",
                         "-" if cp.hwm_growth_mib is None else f"{cp.hwm_growth_mib:.1f}",
                         str(cp.samples), f"< {RSS_TARGET_MIB:.0f} MiB",
                         "met" if cp.worst_mib < RSS_TARGET_MIB else "MISSED"])
        print_rows(rows)
        worst = max(cp.worst_mib for cp in copies)
        print(f"peak RSS growth {worst:.1f} MiB (the larger of the sampled growth and the VmHWM "
              f"one) {verdict(worst < RSS_TARGET_MIB)} the target < {RSS_TARGET_MIB:.0f} MiB; "
              f"the downloaded file's SHA-256 equals the source's ({info['big_sha256'][:16]}...)")
        big = {"size": copies[0].size, "sha256": info["big_sha256"], "worst_growth_mib": worst,
               "target_mib": RSS_TARGET_MIB, "met": worst < RSS_TARGET_MIB,
               "copies": [{**dataclasses.asdict(cp), "growth_mib": cp.growth_mib,
                           "worst_mib": cp.worst_mib, "mbps": cp.mbps} for cp in copies]}

    print()
    print("configuration:")
    print(f"  command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(f"  {CLIENT_SETTINGS}")
    print(f"  why: {CHECKSUM_WHY}")
    print("  reference: urllib3.PoolManager(retries=False), one pool; PUT /files/PATH with "
          "Authorization: Bearer, GET without; bodies read in 1 MiB chunks on both sides")
    print("  filestore env:")
    for key, value in info["filestore_env"].items():
        print(f"    {key}={value}")
    print_problems(problems, "problems", "no errors in the server's output, every body "
                   "checked")
    return {
        "config": {**args_json(args), **info},
        "comparisons": comparisons,
        "loops": [dataclasses.asdict(x) | {"figure": x.figure} for x in loops],
        "big": big,
        "problems": problems,
    }


# -- main -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    begun = time.monotonic()
    aws = find_aws(args.aws) if args.big else ""
    busy_before = cpu_busy()
    server = Server(work / "data", work / "filestore.log")
    key_id, secret = server.s3_keys()
    token = filestore_token(server.env())
    loops: list[Loop] = []
    copies: list[Copy] = []
    info: dict[str, Any] = {}
    with started(server.process(), server.port) as process:
        process.wait_port(server.s3_port)
        log(f"filestore: pid {process.pid}, /files/ on {server.port}, S3 on {server.s3_port}")
        s3 = S3Client(f"http://{HOST}:{server.s3_port}", key_id, secret)
        s3.create_bucket()
        clients: dict[str, Client] = {S3_SIDE: s3, FILES_SIDE: FilesClient(server.port, token)}
        loops += measure_size(clients, SMALL, args.small_count, args.rounds, process.pid)
        loops += measure_size(clients, LARGE, args.large_count, args.rounds, process.pid)
        info["put_content_sha256"] = s3.put_headers.get("x-amz-content-sha256", "(none)")
        if args.big:
            copies, info["big_sha256"], info["aws_version"] = measure_copies(
                aws, work, server, key_id, secret, args.big, process.pid)
        process.check_alive()
    busy_after = cpu_busy()
    problems = [f"server log: {line}" for line in log_problems(server.log_path, ERROR_MARKS)]
    problems += busy_problems(busy_before, busy_after)
    shown_env = dict(server.settings())
    shown_env.update({"FILESTORE_STORAGE__DATA_DIR": "<tmp>/data",
                      "FILESTORE_SERVER__PORT": "<free port>",
                      "FILESTORE_S3__PORT": "<free port>"})
    info.update({
        "versions": {"python": sys.version.split()[0],
                     **package_versions("filestore", "boto3", "botocore", "urllib3", "uvicorn")},
        "cpus": nproc(),
        "cpu_busy_before": busy_before,
        "cpu_busy_after": busy_after,
        "client_sha256_ms": 1000 * sha256_seconds(LARGE),
        "filestore_env": shown_env,
    })
    results = report(args, loops, copies, info, problems)
    results["elapsed_s"] = time.monotonic() - begun
    print(f"\n(whole benchmark: {results['elapsed_s']:.0f} s)")
    write_json(args.json, results, default=str)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("bench/s3api.py", "filestore-bench-s3api-", args.keep,
                    lambda work: run(args, work), in_memory=True)


if __name__ == "__main__":
    sys.exit(main())
