"""Cluster benchmark: what a shared PostgreSQL registry, a second node's copy of each PUT
(`cluster.replicas = 1`) and reads from other nodes cost, each beside its single-node reference
measured in the same run.

What is measured
    The bench starts its own PostgreSQL (Debian's `postgresql` package, `initdb` and `pg_ctl`
    from /usr/lib/postgresql/*/bin, run as the `postgres` user through `runuser` when this runs
    as root, as tests/pg.py does) in a directory of its own under the temp directory, on
    127.0.0.1, with **durability on**: `fsync`, `synchronous_commit` and `full_page_writes` at
    their defaults (on), as a registry in production runs. `pg_stat_statements` is loaded to
    count the statements each request sends. Every `filestore serve` runs one worker, with a fixed
    bearer token (`auth.token`: a PUT through the router may land on any node) and
    `upload.delay = 1h` (nothing uploads while measuring); the cluster's nodes share that
    database (`registry.url`), a `cluster.secret` and one `file://` remote folder, each with a
    data directory of its own and its `cluster.advertise` URL (http://127.0.0.1:PORT). Data
    directories and PostgreSQL's are on the same disk (the temp directory, not /dev/shm), so a
    commit's fsync costs what the disk makes it cost on every side.

    1. PUT latency: --puts sequential PUTs of 1 KiB (new paths, one keep-alive connection, the
       time from the request to the whole answer) to each of three sides, in --rounds rounds,
       the sides' order reversed from round to round:
       - "sqlite": a node with the default SQLite registry (its own data directory);
       - "postgres": node n1 of the cluster (PostgreSQL registry, `cluster.replicas = 0`);
       - "replicas": node r1 of a two-node cluster of its own, r1 and r2, both with
         `cluster.replicas = 1` (its own database on the same PostgreSQL, its own remote
         folder, the same secret and token), so each PUT is answered only once r2 holds the
         bytes fsync'd (filestore/cluster/replicas.py). A cluster apart, so that n1's PUTs are
         not replicated and B below never reads its own copy instead of A's bytes. It runs for
         this part only; before the rounds r1 must see both nodes alive.
       Median and p95 of each side; targets (median): postgres within 1.5x of sqlite, replicas
       within 2.5x of sqlite (replicas / postgres beside them: what the copy adds). After the
       rounds every measured replicas path must be recorded on r1 (`/admin/api/files/PATH`)
       with holder r1 and replica r2, and r2's data directory must hold the very bytes at
       `replicas/<sha256 of the path>-<sha256 of the bytes>`; a postgres path must name no
       replica. From pg_stat_statements (top-level statements, utility ones included; each
       side's database apart), the statements each PUT sends, by statement; a transaction's
       `BEGIN` and its registry lock go as one simple query, so they are one round trip
       (pg_stat_statements counts two statements). For context,
       measured from this process with psycopg: a round trip (`SELECT 1`) and an fsynced
       one-row commit.
    2. Peer reads: nodes A and B (PostgreSQL registry). For each sample a fresh path is PUT to
       A (so only A holds it, not uploaded), then, over fresh sockets (`Connection: close`, the
       time from the connect to the first and to the last body byte):
       - local: GET on A (its own `files/`);
       - peer (cold): GET on B, which reads it from A's `/_cluster/files/` through B's cache
         (one fill, checked against the recorded SHA-256), the first read of that path on B;
       - peer (warm): the same GET on B again, now from B's cache area.
       local and peer-cold go in alternating order from sample to sample; every body's SHA-256
       is checked, and B's cached copy must exist before the warm read. Sizes 1 KiB
       (--small-reads samples) and 32 MiB (--large-reads). One unmeasured round first (B's
       first peer call opens its HTTP connection to A, which it then keeps). Medians; target:
       peer TTFB within 1.5x of the local read's; total and the warm read beside them, and for
       context the same read on the SQLite node, and the CPU time A and B spent per read.
       Then, from pg_stat_statements, the registry statements of 50 more 1 KiB GETs of each
       kind (local on A, cold on B until B installed its copies, warm on B), beside the PUT's.
    3. GET throughput of local 1 KiB files, context only (no target: 2 cores shared by every
       process): --files files PUT through nginx with `deploy/nginx-cluster.conf` (its ports
       substituted, nginx one worker per core, no access log) in front of three nodes (each
       file lands on, and is then read from, the node its path hashes to), against the same
       files on the SQLite node directly, and the part one PostgreSQL node holds on that node
       directly. `wrk -t2 -c32` with a Lua script that walks the paths, one warm-up run, then
       --runs runs of each target in turns, median. The `X-Filestore-Upstream` header must
       show every node serving.

Why
    A cluster should cost little per request over one node: the registry round trips are what
    a PUT pays for sharing it, a PUT with `replicas = 1` adds one node-to-node copy (a local
    HTTP exchange and the other node's fsyncs) on top, and a read of a file another node holds
    should start about as soon as a local one. The SQLite node and node A's own local read are
    the yardsticks, measured minutes apart on the same machine.

Usage
    python bench/cluster.py [--quick] [--puts 200] [--rounds 10] [--small-reads 30]
                            [--large-reads 5] [--files 300] [--duration 5s] [--warmup 2s]
                            [--runs 2] [--json PATH] [--keep]

    --quick: 100 PUTs per side in 5 rounds, 10 + 3 peer samples, 150 files, wrk 2 s x 1 after
    1 s. Needs PostgreSQL 15+ (Debian: apt-get install postgresql), nginx and wrk; exits 2
    without them. Everything binds 127.0.0.1. The default run takes about 65 s on 2 cores,
    --quick about 30 s (the replicas pair's start and its third of the PUTs add some 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from benchlib import (
    HOST,
    KIB,
    MIB,
    BenchError,
    Putter,
    Timing,
    add_output_options,
    apply_profile,
    args_json,
    busy_problems,
    cpu_busy,
    cpu_seconds,
    filestore_command,
    filestore_env,
    filestore_settings,
    find_tools,
    fmt_runs,
    free_port,
    git_revision,
    http_request,
    latency,
    log,
    log_problems,
    nproc,
    package_versions,
    print_problems,
    print_rows,
    put_rounds,
    raw_get,
    run_main,
    size_text,
    verdict,
    versions_text,
    warm_up,
    write_json,
)
from serve import (
    LOG_MARKS,
    WRK_REPORT_LUA,
    Server,
    WrkRun,
    parse_duration,
    run_wrk,
    tool_versions,
)

TOKEN = "bench-cluster-token-0123456789abcdef"
SECRET = "bench-cluster-secret-0123456789abcdef"
PG_USER = "postgres"  # the system user Debian's package creates (PostgreSQL refuses root)
DATABASE = "filestore"
REPLICA_DATABASE = "filestore_replicas"  # the registry of the replicas = 1 pair
SMALL, LARGE = KIB, 32 * MIB
PUT_TARGET = 1.5  # postgres / sqlite, median PUT latency
REPLICA_PUT_TARGET = 2.5  # replicas (cluster.replicas = 1) / sqlite, median PUT latency
TTFB_TARGET = 1.5  # peer cold / local, median TTFB
CONTEXT_PROBES = 200  # SELECT 1 round trips and fsynced commits measured from here
COUNTED_READS = 50  # GETs of each kind whose registry statements are counted
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx-cluster.conf"
ROUTER_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  include {prefix}/filestore-cluster.conf;
}}
"""
# wrk: each thread walks the paths from its own offset; the report line is serve.py's.
WRK_PATHS_LUA = """\
local paths = {{{paths}}}
local n = #paths
local i = 0
setup = function(thread)
  thread:set("offset", math.random(n))
end
request = function()
  i = i + 1
  return wrk.format("GET", paths[((i + (offset or 0)) % n) + 1])
end
"""

QUICK = {"puts": 100, "rounds": 5, "small_reads": 10, "large_reads": 3, "files": 150,
         "duration": 2, "warmup": 1, "runs": 1}
FULL = {"puts": 200, "rounds": 10, "small_reads": 30, "large_reads": 5, "files": 300,
        "duration": 5, "warmup": 2, "runs": 2}


# -- arguments ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/cluster.py",
        description="PUT latency with the PostgreSQL registry and with cluster.replicas = 1 "
                    "vs SQLite, peer vs local read TTFB, and 1 KiB GET throughput of three "
                    "nodes behind nginx vs one node.")
    parser.add_argument("--quick", action="store_true",
                        help="a short pass: 100 PUTs, 10 + 3 peer samples, 150 files, wrk 2 s")
    parser.add_argument("--puts", type=int, default=None,
                        help="1 KiB PUTs per side (default 200)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds the PUTs are split into, sides alternating (default 10)")
    parser.add_argument("--small-reads", type=int, default=None,
                        help="peer-read samples of 1 KiB (default 30)")
    parser.add_argument("--large-reads", type=int, default=None,
                        help="peer-read samples of 32 MiB (default 5)")
    parser.add_argument("--files", type=int, default=None,
                        help="1 KiB files the throughput runs walk (default 300)")
    parser.add_argument("--duration", type=parse_duration, default=None,
                        help="wrk duration per measured run (default 5s)")
    parser.add_argument("--warmup", type=parse_duration, default=None,
                        help="unrecorded wrk run before each target (default 2s)")
    parser.add_argument("--runs", type=int, default=None,
                        help="wrk runs per target, in turns; the median is reported "
                             "(default 2)")
    add_output_options(parser, "PostgreSQL's and every node's data, configs, logs")
    args = parser.parse_args(argv)
    apply_profile(args, QUICK, FULL)
    if min(args.puts, args.rounds, args.small_reads, args.large_reads, args.runs) < 1:
        parser.error("--puts, --rounds, --small-reads, --large-reads and --runs must be >= 1")
    if args.puts < args.rounds:
        parser.error("--puts must be at least --rounds")
    if args.files < 6:
        parser.error("--files must be at least 6 (so that every node gets some)")
    return args


# -- PostgreSQL -----------------------------------------------------------------------------------


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout); None if none is."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class Postgres:
    """One PostgreSQL cluster in `root` (which the `postgres` user must own when this runs as
    root), durable as in production, on a free port of HOST; `stop()` ends it."""

    OPTIONS = ("-c listen_addresses=127.0.0.1", "-c max_connections=100",
               "-c shared_preload_libraries=pg_stat_statements",
               "-c pg_stat_statements.track=top", "-c pg_stat_statements.track_utility=on")

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin = bin_dir
        self.root = root
        self.as_root = os.geteuid() == 0
        self.user = PG_USER if self.as_root else os.environ.get("USER", PG_USER)
        self.data = root / "data"
        self.log_path = root / "server.log"
        self.port = free_port()
        self.running = False

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                cwd=self.root, check=False)
        if result.returncode != 0:
            tail = self.log_path.read_text(errors="replace")[-2000:] \
                if self.log_path.exists() else ""
            raise BenchError(f"{program} failed ({result.returncode}): "
                             f"{result.stderr.strip()} {result.stdout.strip()}\n{tail}")
        return result.stdout

    def start(self) -> float:
        """initdb, pg_ctl start, the database and pg_stat_statements; seconds it took."""
        began = time.monotonic()
        # --no-sync only skips initdb's own final fsync of the new cluster; the server then
        # runs with fsync on.
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync", "--no-instructions")
        options = " ".join([*self.OPTIONS, f"-c port={self.port}",
                            f"-c unix_socket_directories={self.root}"])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", "60", "start")
        self.running = True
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            for database in (DATABASE, REPLICA_DATABASE):
                conn.execute(f'CREATE DATABASE "{database}"')
        # The view reads every database's statements (its rows name their database).
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        return time.monotonic() - began

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{database}"

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                "'synchronous_commit', 'full_page_writes', 'wal_sync_method', "
                "'shared_buffers', 'server_version')").fetchall()
        return {str(name): str(value) for name, value in rows}

    def stop(self) -> None:
        if self.running:
            self.running = False
            with contextlib.suppress(BenchError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def postgres_server(keep: bool) -> Iterator[Postgres]:
    """A running `Postgres` in a directory of its own under the temp directory (handed to the
    `postgres` user when this runs as root: it cannot enter this script's 0700 work
    directory), stopped and removed on the way out (kept with --keep)."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise BenchError("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="filestore-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER, PG_USER)
    server = Postgres(bin_dir, root)
    try:
        log(f"postgres: initdb and start in {root} (port {server.port})")
        seconds = server.start()
        log(f"postgres: ready in {seconds:.1f} s")
        yield server
    finally:
        server.stop()
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def statement_counts(pg: Postgres, database: str = DATABASE) -> dict[str, tuple[int, float]]:
    """Top-level statement -> (calls, ms the server spent executing them) since the last reset,
    in `database` (pg_stat_statements; this script's own queries left out)."""
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, sum(calls)::bigint, sum(total_exec_time) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND query NOT LIKE "
            "'%%pg_stat_statements%%' GROUP BY query", (database,)).fetchall()
    return {" ".join(str(query).split()): (int(calls), float(ms)) for query, calls, ms in rows}


@dataclasses.dataclass
class Statements:
    """The statements `requests` requests sent: those sent at least once every two requests
    (per request), and the rest (heartbeats, the sweeper, the queue's idle looks: far fewer)."""

    requests: int
    seconds: float
    per_request: list[tuple[str, float, float]]  # statement, calls and server ms per request
    background: list[tuple[str, int]]  # statement, calls in all

    @classmethod
    def of(cls, counts: dict[str, tuple[int, float]], requests: int,
           seconds: float) -> Statements:
        per = sorted(((q, c / requests, ms / requests) for q, (c, ms) in counts.items()
                      if c >= requests / 2), key=lambda item: (-item[1], item[0]))
        rest = sorted(((q, c) for q, (c, _) in counts.items() if c < requests / 2),
                      key=lambda item: -item[1])
        return cls(requests, seconds, per, rest)

    @property
    def count(self) -> float:
        return sum(calls for _, calls, _ in self.per_request)

    @property
    def transactions(self) -> float:
        return sum(calls for query, calls, _ in self.per_request if query.upper() == "BEGIN")

    @property
    def server_ms(self) -> float:
        return sum(ms for _, _, ms in self.per_request)

    @property
    def round_trips(self) -> float:
        """The statements, less one per transaction: its `BEGIN` goes with the registry
        lock in one simple query (filestore's `PostgresRegistry.transaction`). psycopg-pool's
        check of a pooled connection sends nothing unless its socket is readable."""
        return self.count - self.transactions

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "statements": self.count,
                "transactions": self.transactions, "round_trips": self.round_trips,
                "server_exec_ms": self.server_ms,
                "per_request": [{"query": q, "calls": c, "server_exec_ms": ms}
                                for q, c, ms in self.per_request],
                "background": [{"query": q, "calls": c} for q, c in self.background]}


def counted(pg: Postgres, requests: int, action: Callable[[], object]) -> Statements:
    """The statements `action` (`requests` requests) makes the nodes send."""
    reset_statements(pg)
    began = time.monotonic()
    action()
    seconds = time.monotonic() - began
    return Statements.of(statement_counts(pg), requests, seconds)


def reset_statements(pg: Postgres) -> None:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def pg_context(pg: Postgres, probes: int) -> dict[str, float]:
    """Median round trip (`SELECT 1`) and fsynced one-row commit, from this process."""
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id bigserial PRIMARY KEY, "
                     "at double precision)")
        trips = []
        for _ in range(probes):
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            trips.append(time.perf_counter() - began)
        commits = []
        for _ in range(probes // 2):
            began = time.perf_counter()
            with conn.transaction():
                conn.execute("INSERT INTO bench_probe (at) VALUES (%s)", (began,))
            commits.append(time.perf_counter() - began)
        conn.execute("DROP TABLE bench_probe")
    return {"round_trip_us": statistics.median(trips) * 1e6,
            "commit_ms": statistics.median(commits) * 1000}


# -- filestore nodes ------------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """One `filestore serve` (1 worker): a SQLite one alone, or a cluster node named `name`."""

    name: str
    data_dir: Path
    log_path: Path
    registry_url: str = ""  # "": SQLite in the data directory
    remote_url: str = ""  # "": the embedded default (a folder in the data directory)
    replicas: int = 0  # cluster.replicas: 1, a PUT waits for another node's fsync'd copy
    port: int = dataclasses.field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def settings(self) -> dict[str, str]:
        found = {
            **filestore_settings(self.data_dir, self.port),
            "FILESTORE_SERVER__HOST": HOST,
            "FILESTORE_SERVER__WORKERS": "1",
            "FILESTORE_AUTH__TOKEN": TOKEN,
            "FILESTORE_UPLOAD__DELAY": "1h",
        }
        if self.registry_url:
            found.update({
                "FILESTORE_REGISTRY__URL": self.registry_url,
                "FILESTORE_CLUSTER__NODE": self.name,
                "FILESTORE_CLUSTER__SECRET": SECRET,
                "FILESTORE_CLUSTER__ADVERTISE": self.url,
                "FILESTORE_CLUSTER__REPLICAS": str(self.replicas),
            })
        if self.remote_url:
            found["FILESTORE_REMOTE__URL"] = self.remote_url
        return found

    def server(self) -> Server:
        return Server(f"filestore {self.name}", [*filestore_command(), "serve"], self.log_path,
                      filestore_env(self.settings()), log_command=True, port=self.port,
                      workers=1)


@contextlib.contextmanager
def running_nodes(*nodes: Node) -> Iterator[list[Server]]:
    """The nodes' servers, started one after another (the first PostgreSQL one migrates the
    registry), each ready (`/readyz` 200); all stopped on the way out."""
    with contextlib.ExitStack() as stack:
        servers = []
        for node in nodes:
            server = node.server()
            server.start()
            stack.callback(server.stop)
            server.wait_for(lambda port=node.port: ready(port), "answer /readyz with 200")
            servers.append(server)
        yield servers


def ready(port: int) -> bool:
    try:
        status, _ = http_request(port, "GET", "/readyz", timeout=2)
    except BenchError:
        return False
    return status == 200


def file_url(path: str) -> str:
    return f"/files/{urllib.parse.quote(path)}"


def put(port: int, path: str, data: bytes) -> dict[str, Any]:
    status, reply = http_request(port, "PUT", file_url(path), body=data, timeout=120,
                                 headers={"authorization": f"Bearer {TOKEN}",
                                          "content-type": "application/octet-stream"})
    if status not in (200, 201):
        raise BenchError(f"PUT {path} on port {port} -> {status}: {reply[:300]!r}")
    answer: dict[str, Any] = json.loads(reply)
    return answer


# -- 1. PUT latency -------------------------------------------------------------------------------


def measure_puts(args: argparse.Namespace, ports: dict[str, int], pg: Postgres,
                 databases: dict[str, str]) -> dict[str, Any]:
    """The PUT rounds of every side (side -> port), taken in turns, the order reversed from
    round to round; the statements each PostgreSQL side (side -> its database) sent, every
    measured path of each side, and the body they all carry."""
    data = os.urandom(SMALL)
    putters = {side: Putter(port, TOKEN) for side, port in ports.items()}
    try:
        warm_up(putters, data)
        reset_statements(pg)
        began = time.monotonic()
        measured = put_rounds(putters, data, args.puts, args.rounds)
        seconds = time.monotonic() - began
    finally:
        for putter in putters.values():
            putter.close()
    statements = {side: Statements.of(statement_counts(pg, database), args.puts, seconds)
                  for side, database in databases.items()}
    return {"samples": measured.samples, "rounds": measured.rounds, "statements": statements,
            "paths": measured.paths, "data": data}


def file_state(node: Node, path: str) -> dict[str, Any]:
    """`GET /admin/api/files/PATH` on `node`: the file's record as that node reads it."""
    status, reply = http_request(node.port, "GET", f"/admin/api/files/{urllib.parse.quote(path)}",
                                 headers={"authorization": f"Bearer {TOKEN}"})
    if status != 200:
        raise BenchError(f"GET /admin/api/files/{path} on {node.name} -> {status}: "
                         f"{reply[:300]!r}")
    answer: dict[str, Any] = json.loads(reply)
    return answer


def wait_alive(node: Node, nodes: int) -> float:
    """Until `node` sees `nodes` live nodes (`/admin/api/cluster`): a replicated PUT needs the
    other one's heartbeat. Seconds it took."""
    began = time.monotonic()
    while True:
        status, reply = http_request(node.port, "GET", "/admin/api/cluster",
                                     headers={"authorization": f"Bearer {TOKEN}"})
        if status == 200 and json.loads(reply).get("alive", 0) >= nodes:
            return time.monotonic() - began
        if time.monotonic() - began > 30:
            raise BenchError(f"{node.name} does not see {nodes} live nodes after 30 s: "
                             f"{status} {reply[:300]!r}")
        time.sleep(0.1)


def check_replicas(holder: Node, replica: Node, paths: Sequence[str], data: bytes,
                   plain: Node, plain_path: str) -> dict[str, Any]:
    """That every measured replicated PUT really left a copy, so the side cannot silently time
    unreplicated PUTs: the holder's record of each path (`/admin/api/files/PATH`) names it the
    holder and `replica` the replica, and the replica's data directory holds the very bytes at
    `replicas/<sha256 of the path>-<sha256 of the bytes>`. And that `plain` (the postgres
    side's node) recorded `plain_path` with no replica."""
    digest = hashlib.sha256(data).hexdigest()
    copy = None
    for path in paths:
        state = file_state(holder, path)
        seen = (state.get("holder"), state.get("replica"), state.get("sha256"),
                state.get("location"))
        if seen != (holder.name, replica.name, digest, "local"):
            raise BenchError(f"{path} on {holder.name}: holder, replica, sha256, location "
                             f"{seen}, expected {(holder.name, replica.name, digest, 'local')}")
        copy = (replica.data_dir / "replicas"
                / f"{hashlib.sha256(path.encode()).hexdigest()}-{digest}")
        if not copy.is_file() or copy.read_bytes() != data:
            raise BenchError(f"{replica.name} holds no copy of {path} at {copy}")
    assert copy is not None
    state = file_state(plain, plain_path)
    if state.get("replica") or state.get("holder") != plain.name:
        raise BenchError(f"{plain_path} on {plain.name}: holder {state.get('holder')!r}, "
                         f"replica {state.get('replica')!r} (the postgres side must not "
                         "replicate)")
    copies = sum(1 for _ in (replica.data_dir / "replicas").iterdir())
    log(f"replicas: all {len(paths)} measured paths recorded on {holder.name} with replica "
        f"{replica.name}, whose data directory holds each copy ({copies} copies in all)")
    return {"checked_paths": len(paths), "holder": holder.name, "replica": replica.name,
            "copies_on_replica": copies, "example_path": paths[-1],
            "example_copy": str(copy.relative_to(replica.data_dir))}


# -- 2. peer reads --------------------------------------------------------------------------------


def timed_get(port: int, path: str, size: int) -> Timing:
    """`benchlib.raw_get` (as bench/miss.py reads: a fresh socket, the body hashed after its last
    byte) of a node's file, its errors naming the node's port."""
    return raw_get(port, path, size, what=f"GET {path} on port {port}")


def checked(timing: Timing, sha256: str, what: str) -> Timing:
    if timing.sha256 != sha256:
        raise BenchError(f"{what}: the body's SHA-256 is {timing.sha256}, the file's {sha256}")
    return timing


def measure_peer(a: Node, b: Node, solo: Node, size: int, samples: int, label: str,
                 pids: dict[str, int]) -> dict[str, Any]:
    """`samples` fresh files PUT to A, each read locally on A, cold and warm on B; and PUT to
    the SQLite node, read there. The CPU seconds A and B (`pids`) spent on the measured local
    and cold reads are summed."""
    found: dict[str, list[Timing]] = {"local": [], "peer_cold": [], "peer_warm": [],
                                      "sqlite": []}
    cpu = {kind: dict.fromkeys(pids, 0.0) for kind in ("local", "peer_cold")}

    def timed_cpu(kind: str, port: int, path: str, measured: bool) -> Timing:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        timing = timed_get(port, path, size)
        if measured:
            for name, pid in pids.items():
                cpu[kind][name] += cpu_seconds(pid) - before[name]
        return timing

    for i in range(samples + 1):  # the first is the unmeasured warm-up
        path = f"peer/{label}/{i:04d}.bin"
        data = os.urandom(size)
        sha256 = put(a.port, path, data)["sha256"]
        put(solo.port, path, data)
        cached = b.data_dir / "cache" / path
        if cached.exists():
            raise BenchError(f"B has {path} cached before its first read")
        local = cold = None
        for which in (("local", "peer") if i % 2 == 0 else ("peer", "local")):
            if which == "local":
                local = checked(timed_cpu("local", a.port, path, i > 0), sha256,
                                f"local GET {path} on A")
            else:
                cold = checked(timed_cpu("peer_cold", b.port, path, i > 0), sha256,
                               f"peer GET {path} on B")
        # The fill installs B's copy once the last byte went out: the warm read is B's cache.
        deadline = time.monotonic() + 10
        while not cached.exists():
            if time.monotonic() > deadline:
                raise BenchError(f"B has no cached copy of {path} 10 s after its peer read")
            time.sleep(0.005)
        warm = checked(timed_get(b.port, path, size), sha256, f"warm GET {path} on B")
        alone = checked(timed_get(solo.port, path, size), sha256, f"GET {path} on sqlite")
        if i == 0:
            continue
        assert local is not None and cold is not None
        found["local"].append(local)
        found["peer_cold"].append(cold)
        found["peer_warm"].append(warm)
        found["sqlite"].append(alone)
    med = {kind: {"ttfb_ms": statistics.median(t.ttfb_ms for t in runs),
                  "total_ms": statistics.median(t.total_ms for t in runs),
                  "ttfb_runs_ms": [t.ttfb_ms for t in runs],
                  "total_runs_ms": [t.total_ms for t in runs]}
           for kind, runs in found.items()}
    local_ttfb, local_total = med["local"]["ttfb_ms"], med["local"]["total_ms"]
    result = {
        "size": size, "samples": samples, **med,
        "ttfb_ratio": med["peer_cold"]["ttfb_ms"] / local_ttfb,
        "total_ratio": med["peer_cold"]["total_ms"] / local_total,
        "warm_ttfb_ratio": med["peer_warm"]["ttfb_ms"] / local_ttfb,
        "warm_total_ratio": med["peer_warm"]["total_ms"] / local_total,
        "target": TTFB_TARGET,
        # CPU ms per read, from /proc (clock ticks of 10 ms: meaningful summed over large reads)
        "cpu_ms": {kind: {name: 1000 * value / samples for name, value in per.items()}
                   for kind, per in cpu.items()},
    }
    result["met"] = result["ttfb_ratio"] <= TTFB_TARGET
    log(f"peer reads {label}: local TTFB {local_ttfb:.2f} ms / total {local_total:.2f} ms, "
        f"peer cold {med['peer_cold']['ttfb_ms']:.2f} / {med['peer_cold']['total_ms']:.2f} ms, "
        f"peer warm {med['peer_warm']['ttfb_ms']:.2f} / {med['peer_warm']['total_ms']:.2f} ms")
    return result


def get_ok(port: int, path: str) -> None:
    status, body = http_request(port, "GET", file_url(path))
    if status != 200:
        raise BenchError(f"GET {path} on port {port} -> {status}: {body[:300]!r}")


def count_reads(pg: Postgres, a: Node, b: Node, requests: int) -> dict[str, Statements]:
    """The statements of `requests` 1 KiB GETs of each kind (fresh files PUT to A first): local
    on A, cold on B (B and A together, until B has installed every fill), warm on B."""
    paths = [f"count/{i:04d}.bin" for i in range(requests)]
    data = os.urandom(SMALL)
    for path in paths:
        put(a.port, path, data)
    time.sleep(0.5)  # the queue's look after the last PUT is over

    def cached() -> None:
        deadline = time.monotonic() + 10
        while not all((b.data_dir / "cache" / path).exists() for path in paths):
            if time.monotonic() > deadline:
                raise BenchError("B's cached copies did not all appear within 10 s")
            time.sleep(0.01)

    def cold() -> None:
        for path in paths:
            get_ok(b.port, path)
        cached()  # B's installs of the fills (after their last bytes went out) count too

    return {"GET local (A)": counted(pg, requests, lambda: [get_ok(a.port, p) for p in paths]),
            "GET peer cold (B and A)": counted(pg, requests, cold),
            "GET warm (B's cache)": counted(pg, requests,
                                            lambda: [get_ok(b.port, p) for p in paths])}


# -- 3. throughput ----------------------------------------------------------------------------


def router(nginx: str, prefix: Path, log_path: Path, ports: list[int]) -> Server:
    """nginx with deploy/nginx-cluster.conf, its listen port and three servers substituted
    (each must be found, so the shipped file and this bench cannot drift apart)."""
    for sub in ("tmp",):
        (prefix / sub).mkdir(parents=True)
    port = free_port()
    text = DEPLOY_CONF.read_text()
    for old, new in [("listen 80;", f"listen {HOST}:{port};"),
                     *((f"server 127.0.0.1:{8081 + i} ", f"server {HOST}:{p} ")
                       for i, p in enumerate(ports))]:
        if text.count(old) != 1:
            raise BenchError(f"{DEPLOY_CONF} no longer has {old!r} once")
        text = text.replace(old, new)
    (prefix / "filestore-cluster.conf").write_text(text)
    conf = prefix / "nginx.conf"
    conf.write_text(ROUTER_CONF.format(user="user root;\n" if os.geteuid() == 0 else "",
                                       workers=nproc(), prefix=prefix))
    return Server("nginx router", [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"),
                                   "-c", str(conf)], log_path, port=port, workers=nproc(),
                  uvicorn=False)


def put_via(port: int, path: str, data: bytes) -> str:
    """PUT through the router; the node that took it (X-Filestore-Upstream)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("PUT", file_url(path), body=data,
                     headers={"authorization": f"Bearer {TOKEN}",
                              "content-type": "application/octet-stream"})
        response = conn.getresponse()
        reply = response.read()
        upstream = response.getheader("x-filestore-upstream", "")
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"PUT {path} through nginx failed: {exc!r}") from None
    finally:
        conn.close()
    if response.status != 201:
        raise BenchError(f"PUT {path} through nginx -> {response.status}: {reply[:300]!r}")
    return upstream


def wrk_script(work: Path, name: str, paths: Sequence[str]) -> Path:
    script = work / f"{name}.lua"
    quoted = ", ".join(json.dumps(file_url(p)) for p in paths)
    script.write_text(WRK_PATHS_LUA.format(paths=quoted) + WRK_REPORT_LUA)
    return script


def check_gets(port: int, paths: Sequence[str], files: dict[str, bytes], what: str) -> None:
    for path in paths:
        status, body = http_request(port, "GET", file_url(path))
        if status != 200 or body != files[path]:
            raise BenchError(f"{what}: GET {path} -> {status}, {len(body)} bytes, not the file")


def measure_throughput(args: argparse.Namespace, targets: dict[str, tuple[int, Path]],
                       ) -> dict[str, list[WrkRun]]:
    """Each target's wrk runs (target -> port, Lua script), after a warm-up of each, in turns."""
    argvs = {}
    for target, (port, script) in targets.items():
        url = f"http://{HOST}:{port}/"
        run_wrk(["wrk", "-t2", "-c32", f"-d{args.warmup}s", "-s", str(script), url],
                args.warmup, args.wrk)  # the warm-up: its figures are dropped
        argvs[target] = ["wrk", "-t2", "-c32", f"-d{args.duration}s", "-s", str(script), url]
    runs: dict[str, list[WrkRun]] = {target: [] for target in targets}
    for i in range(args.runs):
        for target, argv in argvs.items():
            run = run_wrk(argv, args.duration, args.wrk)
            assert run is not None
            runs[target].append(run)
            log(f"{target} run {i + 1}/{args.runs}: {run.rps:,.0f} req/s, p50 "
                f"{run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, errors {run.errors}")
    return runs


# -- report ---------------------------------------------------------------------------------------


def report_puts(args: argparse.Namespace, puts: dict[str, Any], context: dict[str, float],
                ) -> dict[str, Any]:
    samples = puts["samples"]
    sqlite, pg, rep = (latency(samples[side]) for side in ("sqlite", "postgres", "replicas"))
    ratio, ratio_p95 = pg["median_ms"] / sqlite["median_ms"], pg["p95_ms"] / sqlite["p95_ms"]
    rep_ratio = rep["median_ms"] / sqlite["median_ms"]
    rep_ratio_p95 = rep["p95_ms"] / sqlite["p95_ms"]
    met, rep_met = ratio <= PUT_TARGET, rep_ratio <= REPLICA_PUT_TARGET
    per_round = [r["postgres"] / r["sqlite"] for r in puts["rounds"]]
    rep_per_round = [r["replicas"] / r["sqlite"] for r in puts["rounds"]]
    print(f"1. PUT latency: {args.puts} sequential PUTs of 1 KiB per side (new paths, one "
          f"keep-alive connection), {args.rounds} round(s), sides alternating")
    rows = [["registry", "median ms", "p95 ms", "mean ms", "max ms"]]
    for name, figures in (("sqlite (default)", sqlite), ("postgres", pg),
                          ("postgres, replicas = 1", rep)):
        rows.append([name, f"{figures['median_ms']:.2f}", f"{figures['p95_ms']:.2f}",
                     f"{figures['mean_ms']:.2f}", f"{figures['max_ms']:.2f}"])
    rows.append(["postgres / sqlite", f"{ratio:.2f}x", f"{ratio_p95:.2f}x", "", ""])
    rows.append(["replicas / sqlite", f"{rep_ratio:.2f}x", f"{rep_ratio_p95:.2f}x", "", ""])
    rows.append(["replicas / postgres", f"{rep['median_ms'] / pg['median_ms']:.2f}x",
                 f"{rep['p95_ms'] / pg['p95_ms']:.2f}x", "", ""])
    print_rows(rows, right_align=True)
    print(f"postgres: median ratio {ratio:.2f}x {verdict(met)} the target <= {PUT_TARGET}x; "
          f"each round's: {fmt_runs(per_round, 2)}")
    print(f"replicas = 1: median ratio {rep_ratio:.2f}x {verdict(rep_met)} the target <= "
          f"{REPLICA_PUT_TARGET}x; each round's: {fmt_runs(rep_per_round, 2)}")
    statements: dict[str, Statements] = puts["statements"]
    check = puts["replica_check"]
    print(f"replicas = 1: a two-node cluster of its own (nodes {check['holder']} and "
          f"{check['replica']}, database {REPLICA_DATABASE}), PUTs to {check['holder']}; all "
          f"{check['checked_paths']} measured paths recorded with replica {check['replica']}, "
          f"whose data directory holds each copy (e.g. {check['example_copy']})")
    print("registry statements per PUT (round trips: BEGIN goes with the lock): postgres "
          + ", replicas = 1 ".join(f"{statements[side].count:.1f} "
                                   f"({statements[side].round_trips:.1f})"
                                   for side in ("postgres", "replicas")))
    print(f"measured from this process: a PostgreSQL round trip (SELECT 1) "
          f"{context['round_trip_us']:.0f} us, an fsynced one-row commit "
          f"{context['commit_ms']:.2f} ms (medians of {CONTEXT_PROBES} and "
          f"{CONTEXT_PROBES // 2})")
    return {"sqlite": sqlite, "postgres": pg, "ratio": ratio, "ratio_p95": ratio_p95,
            "ratio_per_round": per_round, "target": PUT_TARGET, "met": met,
            "statements": statements["postgres"].as_dict(),
            "replicas": rep, "replicas_ratio": rep_ratio, "replicas_ratio_p95": rep_ratio_p95,
            "replicas_ratio_per_round": rep_per_round,
            "replicas_vs_postgres": rep["median_ms"] / pg["median_ms"],
            "replicas_target": REPLICA_PUT_TARGET, "replicas_met": rep_met,
            "replicas_statements": statements["replicas"].as_dict(),
            "replicas_check": check,
            "pg_round_trip_us": context["round_trip_us"],
            "pg_commit_ms": context["commit_ms"]}


def report_statements(counts: dict[str, Statements], listed: Sequence[str]) -> None:
    print("Registry statements per request (pg_stat_statements: top-level statements of every "
          "node, utility ones included, sent at least once every two requests; round trips "
          "count a transaction's BEGIN and registry lock as one: they go as one query)")
    rows = [["request", "requests", "statements", "transactions", "round trips",
             "server exec ms"]]
    for kind, st in counts.items():
        rows.append([kind, str(st.requests), f"{st.count:.1f}", f"{st.transactions:.1f}",
                     f"{st.round_trips:.1f}", f"{st.server_ms:.3f}"])
    print_rows(rows, right_align=True)
    for kind in listed:
        st = counts[kind]
        print()
        print(f"{kind}: statements per request")
        rows = [["calls", "exec ms", "statement"]]
        rows += [[f"{calls:.2f}", f"{ms:.3f}", query[:104]]
                 for query, calls, ms in st.per_request]
        print_rows(rows)
        if st.background:
            print(f"  (besides: {sum(c for _, c in st.background)} calls of "
                  f"{len(st.background)} background statement(s) in {st.seconds:.1f} s, e.g. "
                  f"{st.background[0][0][:60]!r})")


def report_peers(peers: list[dict[str, Any]]) -> None:
    print("2. Peer reads: a file only node A holds (not uploaded), GET on B (cold: through A's "
          "/_cluster/files/ into B's cache; warm: B's cache) vs the same GET on A; fresh "
          "sockets, ms from the connect, medians; the SQLite node's local read for context")
    rows = [["size", "samples", "read", "TTFB ms", "total ms", "TTFB vs local",
             "total vs local", "TTFB of each sample"]]
    for p in peers:
        for kind, name in (("local", "local on A"), ("peer_cold", "peer cold on B"),
                           ("peer_warm", "warm on B"), ("sqlite", "local, sqlite node")):
            figures = p[kind]
            ttfb = "" if kind == "local" else \
                f"{figures['ttfb_ms'] / p['local']['ttfb_ms']:.2f}x"
            total = "" if kind == "local" else \
                f"{figures['total_ms'] / p['local']['total_ms']:.2f}x"
            rows.append([size_text(p["size"]), str(p["samples"]), name,
                         f"{figures['ttfb_ms']:.2f}", f"{figures['total_ms']:.2f}", ttfb, total,
                         fmt_runs(figures["ttfb_runs_ms"][:10], 2)
                         + (", ..." if len(figures["ttfb_runs_ms"]) > 10 else "")])
    print_rows(rows)
    for p in peers:
        print(f"{size_text(p['size'])}: peer TTFB {p['ttfb_ratio']:.2f}x the local read's "
              f"{verdict(p['met'])} the target <= {TTFB_TARGET}x (total {p['total_ratio']:.2f}x; "
              f"warm on B: TTFB {p['warm_ttfb_ratio']:.2f}x, total {p['warm_total_ratio']:.2f}x)")
    large = [p for p in peers if p["size"] >= MIB]
    for p in large:
        local, cold = p["cpu_ms"]["local"], p["cpu_ms"]["peer_cold"]
        print(f"CPU per {size_text(p['size'])} read until its last byte (/proc, 10 ms ticks, "
              f"{p['samples']} reads): local on A: A {local['A']:.0f} ms; peer cold: A "
              f"{cold['A']:.0f} ms, B {cold['B']:.0f} ms")


def report_throughput(args: argparse.Namespace, runs: dict[str, list[WrkRun]],
                      spread: dict[str, int], files: int) -> dict[str, Any]:
    print(f"3. GET throughput of local 1 KiB files (context, no target): wrk -t2 -c32 "
          f"{args.duration}s x {args.runs} run(s) after a {args.warmup}s warm-up, in turns, "
          f"median; paths walked by a Lua script; {nproc()} CPUs for everything")
    results = {}
    rows = [["target", "paths", "req/s", "vs one sqlite node", "p50 ms", "p99 ms", "errors",
             "req/s of each run"]]
    base = statistics.median(r.rps for r in runs["one sqlite node"])
    for target, got in runs.items():
        rps = statistics.median(r.rps for r in got)
        paths = spread["n1"] if target == "one postgres node (n1)" else files
        results[target] = {"rps": rps, "p50_ms": statistics.median(r.p50_ms for r in got),
                           "p99_ms": statistics.median(r.p99_ms for r in got),
                           "errors": sum(r.errors for r in got), "paths": paths,
                           "runs": [dataclasses.asdict(r) for r in got]}
        rows.append([target, str(paths), f"{rps:,.0f}", f"{rps / base:.2f}x",
                     f"{results[target]['p50_ms']:.2f}", f"{results[target]['p99_ms']:.2f}",
                     str(results[target]["errors"]), fmt_runs([r.rps for r in got], 0)])
    print_rows(rows, right_align=True)
    print("files per node behind nginx (X-Filestore-Upstream of each PUT): "
          + ", ".join(f"{name} {count}" for name, count in spread.items()))
    return {"results": results, "spread": spread,
            "ratio": results["3 nodes behind nginx"]["rps"] / base}


# -- main -----------------------------------------------------------------------------------------


def versions(nginx: str, wrk: str, pg_settings: dict[str, str]) -> dict[str, str]:
    found = {"python": sys.version.split()[0],
             "postgresql": pg_settings.get("server_version", "?"), **tool_versions(nginx, wrk)}
    found.update(package_versions("filestore", "uvicorn", "psycopg", "psycopg-pool", "aiohttp"))
    revision = git_revision()
    if revision is not None:
        found["git"] = revision
    return found


def filesystem_of(path: Path) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)],
                         capture_output=True, text=True, check=False)
    return " ".join(out.stdout.split()) or "?"


def run(args: argparse.Namespace, work: Path) -> int:
    begun = time.monotonic()
    busy_before = cpu_busy()
    log(f"CPU busy before start (other processes, steal): {busy_before:.0%}")
    logs = work / "logs"
    logs.mkdir()
    shared_remote = work / "shared-remote"
    shared_remote.mkdir()
    pair_remote = work / "replicas-remote"  # the replicas = 1 pair's bucket
    pair_remote.mkdir()
    problems: list[str] = []
    results: dict[str, Any] = {}
    nodes: list[Node] = []
    with postgres_server(args.keep) as pg:
        pg_settings = pg.settings()
        found_versions = versions(args.nginx, args.wrk, pg_settings)
        log("versions: " + versions_text(found_versions))

        def cluster_node(name: str, database: str = DATABASE, remote: Path = shared_remote,
                         replicas: int = 0) -> Node:
            node = Node(name, work / name, logs / f"{name}.log", pg.url(database),
                        remote.as_uri(), replicas)
            nodes.append(node)
            return node

        solo = Node("sqlite", work / "sqlite", logs / "sqlite.log")
        nodes.append(solo)
        n1, n2, n3 = (cluster_node(name) for name in ("n1", "n2", "n3"))
        # The replicas = 1 pair: a cluster of its own (its own database and bucket), so that
        # n1's PUTs stay unreplicated and n1 and n2 read each other as before.
        r1, r2 = (cluster_node(name, REPLICA_DATABASE, pair_remote, replicas=1)
                  for name in ("r1", "r2"))
        with running_nodes(solo, n1, n2) as servers:
            # 1. PUT latency.
            context = pg_context(pg, CONTEXT_PROBES)
            with running_nodes(r1, r2) as pair:
                log(f"replicas: {r1.name} sees both nodes alive after "
                    f"{wait_alive(r1, 2):.1f} s")
                puts = measure_puts(args, {"sqlite": solo.port, "postgres": n1.port,
                                           "replicas": r1.port}, pg,
                                    {"postgres": DATABASE, "replicas": REPLICA_DATABASE})
                puts["replica_check"] = check_replicas(r1, r2, puts["paths"]["replicas"],
                                                       puts["data"], n1,
                                                       puts["paths"]["postgres"][0])
                for server in pair:
                    server.check_alive()
            # 2. Peer reads: A = n1, B = n2.
            pids = {"A": servers[1].pid, "B": servers[2].pid}
            peers = [measure_peer(n1, n2, solo, SMALL, args.small_reads, "1k", pids),
                     measure_peer(n1, n2, solo, LARGE, args.large_reads, "32m", pids)]
            statements = {"PUT 1 KiB": puts["statements"]["postgres"],
                          "PUT 1 KiB, replicas = 1": puts["statements"]["replicas"],
                          **count_reads(pg, n1, n2, COUNTED_READS)}
            # 3. Throughput: n3 joins; nginx in front of the three.
            with running_nodes(n3) as more:
                prefix = work / "nginx"
                nginx = router(args.nginx, prefix, logs / "nginx.log",
                               [n1.port, n2.port, n3.port])
                names = {f"{HOST}:{n.port}": n.name for n in (n1, n2, n3)}
                with contextlib.ExitStack() as stack:
                    nginx.start()
                    stack.callback(nginx.stop)
                    nginx.wait_ready()
                    data = {f"tp/{i:05d}.bin": os.urandom(SMALL) for i in range(args.files)}
                    holders: dict[str, list[str]] = {n.name: [] for n in (n1, n2, n3)}
                    for path, body in data.items():
                        upstream = put_via(nginx.port, path, body)
                        if upstream not in names:
                            raise BenchError(f"PUT {path} through nginx: X-Filestore-Upstream "
                                             f"{upstream!r} is none of the nodes")
                        holders[names[upstream]].append(path)
                        put(solo.port, path, body)
                    spread = {name: len(paths) for name, paths in holders.items()}
                    if min(spread.values()) == 0:
                        raise BenchError(f"nginx sent every file to some of the nodes only: "
                                         f"{spread}")
                    all_paths = list(data)
                    check_gets(nginx.port, all_paths, data, "nginx")
                    check_gets(solo.port, all_paths, data, "sqlite node")
                    check_gets(n1.port, holders["n1"], data, "n1")
                    tp_runs = measure_throughput(args, {
                        "one sqlite node": (solo.port, wrk_script(work, "all", all_paths)),
                        "one postgres node (n1)": (n1.port,
                                                   wrk_script(work, "n1", holders["n1"])),
                        "3 nodes behind nginx": (nginx.port, wrk_script(work, "all-nginx",
                                                                        all_paths)),
                    })
                for server in (*servers, *more):
                    server.check_alive()
    busy_after = cpu_busy()
    for node in nodes:
        problems += [f"{node.name} log: {line}" for line in log_problems(node.log_path, LOG_MARKS)]
    problems += busy_problems(busy_before, busy_after)
    errors = sum(r.errors for got in tp_runs.values() for r in got)
    if errors:
        problems.append(f"{errors} wrk errors (socket errors or status >= 400)")

    disk = filesystem_of(work)
    print()
    print(f"Cluster: filestore serve nodes of 1 worker each; PostgreSQL "
          f"{pg_settings.get('server_version', '?')} on 127.0.0.1 with fsync="
          f"{pg_settings.get('fsync')}, synchronous_commit={pg_settings.get('synchronous_commit')}"
          f", full_page_writes={pg_settings.get('full_page_writes')}, wal_sync_method="
          f"{pg_settings.get('wal_sync_method')}; SQLite synchronous=FULL; every data "
          f"directory and PostgreSQL's on {disk}")
    print(f"{versions_text(found_versions)}; {nproc()} CPUs, busy with other work (incl. "
          f"hypervisor steal) {busy_before:.0%} before the run and {busy_after:.0%} after it")
    print()
    results["put"] = report_puts(args, puts, context)
    print()
    report_peers(peers)
    results["peer"] = peers
    print()
    report_statements(statements, ["PUT 1 KiB", "PUT 1 KiB, replicas = 1", "GET local (A)",
                                   "GET peer cold (B and A)"])
    results["statements"] = {kind: st.as_dict() for kind, st in statements.items()}
    print()
    results["throughput"] = report_throughput(args, tp_runs, spread, args.files)
    print_problems(problems, "problems", "no errors in any server's output, every body checked")
    results.update({
        "config": {**args_json(args), "versions": found_versions, "postgres": pg_settings,
                   "disk": disk, "cpus": nproc()},
        "cpu_busy_before": busy_before, "cpu_busy_after": busy_after, "problems": problems,
        "elapsed_s": time.monotonic() - begun,
    })
    print(f"\n(whole benchmark: {results['elapsed_s']:.0f} s)")
    write_json(args.json, results, default=str)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = find_tools("bench/cluster.py", "nginx", "wrk")
    if tools is None:
        return 2
    args.nginx, args.wrk = tools
    if pg_bin_dir() is None:
        print("bench/cluster.py: PostgreSQL not found in /usr/lib/postgresql/*/bin; install it "
              "(Debian: apt-get install -y postgresql)", file=sys.stderr)
        return 2
    return run_main("bench/cluster.py", "filestore-bench-cluster-", args.keep,
                    lambda work: run(args, work))


if __name__ == "__main__":
    sys.exit(main())
