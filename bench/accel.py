"""Offload benchmark: nginx + filestore with `server.accel_redirect`, and nginx answering hits
itself (`server.static_hits`), against nginx alone.

What is measured
    GET throughput of the same bytes (random files of each --sizes size, default 1 KiB, 64 KiB,
    1 MiB and 32 MiB, PUT through filestore as `<size>.bin` with Content-Type
    application/octet-stream, the type nginx's mime.types gives `.bin`), public warm reads
    without a query or a credential, from four setups:

    1. nginx serving `data_dir/files/` itself (`root`, sendfile, tcp_nopush, open_file_cache, as
       in bench/serve.py): the reference;
    2. nginx with `deploy/nginx.conf` (its own file, port, upstream and data directory
       substituted) in front of `filestore serve --workers N` with
       `server.accel_redirect = "/_filestore/"`: every GET is proxied to filestore, which does
       its auth, lookup, open-and-check, validators and accounting and answers with
       X-Accel-Redirect; nginx then sends the file with sendfile (static_hits is off, so
       the config's `try_files` of the static tree finds nothing);
    3. "nginx+static": the same `deploy/nginx.conf` in front of a second `filestore serve
       --workers N`, with a data directory of its own, `accel_redirect` and
       `server.static_hits = true`: the PUT links each file into DATA/static/files/ and nginx
       answers the GET from there (`try_files`, sendfile, no open_file_cache) without asking
       filestore, and logs the hit to DATA/hits.log (buffered) for filestore to count. A
       second nginx (the shipped file defines an upstream, a map and a log format of the http
       block, so it cannot be included twice in one);
    4. for context, filestore alone on its own port (it sends the bytes itself).

    Then what the static tree costs a write: --puts sequential PUTs of 1 KiB to new paths
    (default 200; 0: none) on each of the two filestores directly (one keep-alive connection
    each), in 10 rounds, the two in turns: with `static_hits` each PUT also claims nginx's ETag
    in the registry and hard-links the file into DATA/static/files/. Reported: each one's median
    and p95, the ratio of the medians and each round's (context, no target).

    Each nginx has one worker per core. Each figure comes from
    `wrk -t2 -c32 -dDURATION URL` (`-c4` for 32 MiB), after an unrecorded warm-up run, as the
    median over --runs runs (the wrk runner of bench/serve.py). The targets' runs are taken in
    turns, and a ratio is the median of the runs' ratios (run i of one target over run i of
    the other, taken seconds apart), so a load that drifts during the benchmark moves both
    sides of each ratio alike. Before measuring, every URL is fetched once and must return 200
    and exactly the file's bytes; through nginx, nginx's access log must also show how it was
    answered: for nginx+filestore the internal redirect (the figure is the offload's, not
    filestore sending the bytes behind nginx), for nginx+static an answer of the static
    location with no upstream (`$upstream_status` "-": filestore was not asked), from a hard
    link of the file in DATA/static/files/. The report says whether filestore opened
    DATA/hits.log, where nginx logs its static hits. Any line of an error log is a problem;
    the first few of each log are listed.

Why
    The targets compare the product's production setup with the physical limit of the machine:
    32 MiB through nginx + filestore >= 0.95x nginx alone (bytes move by sendfile either way),
    1 KiB >= 0.3x (per-request cost: a proxy hop to filestore and back on top of nginx's own);
    and a static hit, which should cost nginx little more than a static file (a `try_files`
    stat, an open without a descriptor cache, a buffered log line), >= 0.8x nginx alone at every
    size.

Usage
    python bench/accel.py [--duration 5s] [--runs 1] [--sizes 1k,64k,1m,32m] [--workers 2]
                          [--warmup 2s] [--puts 200] [--json PATH] [--keep]

Needs nginx and wrk (Debian: `apt-get install nginx wrk`); exits 2 without them. Everything
binds 127.0.0.1, each server on a free port.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    KIB,
    BenchError,
    Putter,
    add_output_options,
    filestore_command,
    filestore_token,
    free_port,
    http_request,
    latency,
    log,
    log_problems,
    nproc,
    put_rounds,
    versions_text,
    warm_up,
)
from serve import (
    LOG_MARKS,
    Measurement,
    Server,
    add_wrk_options,
    check_wrk_options,
    finish,
    main_with_tools,
    measure_interleaved,
    nginx_server,
    print_commands,
    print_tables,
    put_test_files,
    running,
    serve_env,
    set_up,
)

PREFIX = "/_filestore/"
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
TARGET_1K_RPS_RATIO = 0.3
TARGET_32M_MBPS_RATIO = 0.95
TARGET_STATIC_RATIO = 0.8  # nginx+static / nginx, at every size
TARGETS = ("nginx", "nginx+filestore", "nginx+static", "filestore")
# A clean run's error logs (level warn) are empty: a warning is a problem too.
NGINX_MARKS = ("[warn]", "[error]", "[crit]", "[alert]", "[emerg]")
PROBLEM_LINES = 5  # of one log; the rest are counted

# One nginx: the reference server block of bench/serve.py, and the shipped one included as it
# is. Only the check requests (`?check=1`) are logged: logging is no part of what is measured.
NGINX_HTTP = """\
  map $request_uri $logged {{ default 0; "~[?]check=1$" 1; }}
  log_format accel '$request_uri $uri $status $upstream_status';
  access_log {prefix}/logs/access.log accel if=$logged;
"""
# The static setup's nginx: a query would send the request to filestore, so its check request
# is marked by a header instead (nginx's static map looks only at the method, query and
# Authorization).
CHECK_HEADER = "X-Bench-Check"
NGINX_STATIC_HTTP = """\
  map $http_x_bench_check $logged {{ default 0; "1" 1; }}
  log_format accel '$request_uri $uri $status $upstream_status';
  access_log {prefix}/logs/access.log accel if=$logged;
"""


def deploy_conf(port: int, upstream_port: int, data_dir: Path, check_log: Path) -> str:
    """`deploy/nginx.conf` with its port, upstream and data directory substituted (each the
    number of times tests/test_accel.py's copy expects), and the check log added to the static
    location, whose own `access_log` replaces the inherited one."""
    text = DEPLOY_CONF.read_text()
    for old, new, count in (
        ("listen 80;", f"listen {HOST}:{port};", 1),
        ("server 127.0.0.1:8080;", f"server {HOST}:{upstream_port};", 1),
        ("alias /srv/filestore/", f"alias {data_dir}/", 2),
        ("root /srv/filestore/static;", f"root {data_dir}/static;", 1),
        ("/srv/filestore/hits.log", f"{data_dir}/hits.log", 1),
        ("flush=1s;\n",
         f"flush=1s;\n        access_log {check_log} accel if=$logged;\n", 1),
    ):
        if text.count(old) != count:
            raise BenchError(f"{DEPLOY_CONF} no longer contains {old!r} {count} time(s)")
        text = text.replace(old, new)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/accel.py",
        description="GET throughput of nginx + filestore (X-Accel-Redirect, and static hits "
                    "answered by nginx) vs nginx alone.",
    )
    add_wrk_options(parser, "1k,64k,1m,32m", "each filestore")
    parser.add_argument("--puts", type=int, default=200,
                        help="1 KiB PUTs timed on each filestore, static_hits on and off "
                             "(default 200; 0: none)")
    add_output_options(parser, "data, configs, server logs")
    args = parser.parse_args(argv)
    check_wrk_options(parser, args)
    if args.puts < 0:
        parser.error("--puts must be 0 or more")
    return args


PUT_ROUNDS = 10


def measure_put_cost(args: argparse.Namespace, sides: dict[str, tuple[int, str]]
                     ) -> dict[str, Any]:
    """--puts timed 1 KiB PUTs on each filestore (side -> port, token), in rounds: each side's
    latency and the ratio static / plain (of the medians, and each round's)."""
    putters = {side: Putter(port, token) for side, (port, token) in sides.items()}
    data = os.urandom(KIB)
    try:
        warm_up(putters, data)
        measured = put_rounds(putters, data, args.puts, min(PUT_ROUNDS, args.puts))
    finally:
        for putter in putters.values():
            putter.close()
    found = {side: latency(samples) for side, samples in measured.samples.items()}
    return {**found, "ratio": found["static"]["median_ms"] / found["plain"]["median_ms"],
            "round_ratios": [r["static"] / r["plain"] for r in measured.rounds]}


def print_put_cost(cost: dict[str, Any]) -> None:
    print(f"PUT 1 KiB on filestore directly, {cost['plain']['count']} each, rounds in turns: "
          f"static_hits off median {cost['plain']['median_ms']:.2f} ms (p95 "
          f"{cost['plain']['p95_ms']:.2f}), on {cost['static']['median_ms']:.2f} ms (p95 "
          f"{cost['static']['p95_ms']:.2f}): {cost['ratio']:.2f}x; each round's: "
          + ", ".join(f"{r:.2f}" for r in cost["round_ratios"]))


def logged_lines(access_log: Path, request_uri: str) -> list[list[str]]:
    """The access log's lines for `request_uri`, split; waits up to 5 s for the first (nginx
    writes a line once the response is sent)."""
    deadline = time.monotonic() + 5
    while True:
        text = access_log.read_text() if access_log.exists() else ""
        found = [fields for fields in (line.split(" ") for line in text.splitlines())
                 if fields[0] == request_uri]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def check_offloaded(port: int, access_log: Path, url_path: str, expected: bytes) -> None:
    """A GET of `url_path` returns `expected`, and nginx's access log shows it answered from
    the internal location after one upstream answer (filestore's redirect): nginx sent the
    file, not filestore."""
    url_path += "?check=1"
    status, body = http_request(port, "GET", url_path)
    if status != 200 or body != expected:
        raise BenchError(f"nginx+filestore: GET {url_path} -> {status}, {len(body)} bytes")
    for request_uri, uri, logged_status, *upstream in logged_lines(access_log, url_path):
        if uri.startswith(PREFIX):
            if logged_status == "200" and upstream == ["200"]:
                return
            raise BenchError(f"nginx: {url_path} was not offloaded cleanly: "
                             f"{request_uri} {uri} {logged_status} {' '.join(upstream)}")
    raise BenchError(f"nginx: no internal redirect for {url_path} in {access_log}; is "
                     "server.accel_redirect set and the location right?")


def check_static(port: int, access_log: Path, data_dir: Path, url_path: str,
                 expected: bytes) -> None:
    """DATA/static has a hard link of the file, and a public GET of `url_path` returns
    `expected`, answered by nginx's static location without asking filestore (the access log:
    `$uri` the request's, `$upstream_status` "-")."""
    name = url_path.removeprefix("/files/")
    link, source = data_dir / "static" / "files" / name, data_dir / "files" / name
    try:
        linked, stored = link.stat(), source.stat()
    except OSError as exc:
        raise BenchError(f"nginx+static: {name} is not linked into the static tree ({exc}); "
                         "is server.static_hits on and its Content-Type nginx's?") from exc
    if (linked.st_dev, linked.st_ino) != (stored.st_dev, stored.st_ino):
        raise BenchError(f"nginx+static: {link} is not a hard link of {source}")
    status, body = http_request(port, "GET", url_path, headers={CHECK_HEADER: "1"})
    if status != 200 or body != expected:
        raise BenchError(f"nginx+static: GET {url_path} -> {status}, {len(body)} bytes")
    # Only this request carries the header: one line per check, of the static location's log.
    lines = logged_lines(access_log, url_path)
    if not lines:
        raise BenchError(f"nginx+static: no line for {url_path} in {access_log}")
    if lines[-1][1:] != [url_path, "200", "-"]:
        raise BenchError(f"nginx+static: {url_path} was not a static hit (the log's "
                         f"$request_uri $uri $status $upstream_status: {' '.join(lines[-1])})")


def paired_ratio(numerator: Measurement, denominator: Measurement) -> float:
    """The median of the ratios of runs taken one after the other (run i of each): steadier
    than the ratio of the medians when the machine's load drifts during the benchmark."""
    return statistics.median(a.rps / b.rps for a, b in zip(numerator.runs, denominator.runs,
                                                           strict=True))


def print_table(results: dict[tuple[str, str], Measurement],
                sizes: list[tuple[str, int]]) -> None:
    def vs_nginx(target: str) -> Callable[[str], str]:
        return lambda label: f"{paired_ratio(results[target, label], results['nginx', label]):.2f}x"

    print_tables(results, sizes, TARGETS, {"nginx+fs / nginx": vs_nginx("nginx+filestore"),
                                           "static / nginx": vs_nginx("nginx+static"),
                                           "fs alone / nginx": vs_nginx("filestore")})
    targets = {"1k": TARGET_1K_RPS_RATIO, "32m": TARGET_32M_MBPS_RATIO}
    notes = []

    def note(target: str, label: str, goal: float) -> None:
        ratio = paired_ratio(results[target, label], results["nginx", label])
        verdict = "met" if ratio >= goal else "MISSED"
        notes.append(f"{label}: {target} / nginx {ratio:.2f}x, the median of the runs' ratios "
                     f"(target >= {goal}x: {verdict})")

    for label, _ in sizes:
        if label in targets:
            note("nginx+filestore", label, targets[label])
    for label, _ in sizes:
        note("nginx+static", label, TARGET_STATIC_RATIO)
    print()
    print("targets:")
    for line in notes:
        print(f"  {line}")


def log_summary(name: str, path: Path, marks: Sequence[str]) -> list[str]:
    """The problem lines of a log (`log_problems`), the first PROBLEM_LINES of them and how
    many more: an alert per request would otherwise fill the report."""
    lines = log_problems(path, marks)
    shown = [f"{name}: {line}" for line in lines[:PROBLEM_LINES]]
    if len(lines) > PROBLEM_LINES:
        shown.append(f"{name}: ... and {len(lines) - PROBLEM_LINES} more such lines")
    return shown


def run(args: argparse.Namespace, work: Path, found_versions: dict[str, str]) -> int:
    busy_before, lua, logs, data_dir, files = set_up(work, args.sizes)
    fs_cmd = filestore_command()

    # filestore with the offload on; uploads off, so every file stays in files/ for the run.
    fs_port = free_port()
    env = serve_env(data_dir, fs_port)
    env.update({"FILESTORE_SERVER__ACCEL_REDIRECT": PREFIX, "FILESTORE_UPLOAD__ENABLED": "false"})
    token = filestore_token(env)
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore.log", env, port=fs_port, workers=args.workers)
    # The same with static hits on, in a data directory of its own.
    static_dir = work / "filestore-static-data"
    static_fs_port = free_port()
    static_env = serve_env(static_dir, static_fs_port)
    static_env.update({"FILESTORE_SERVER__ACCEL_REDIRECT": PREFIX,
                       "FILESTORE_UPLOAD__ENABLED": "false",
                       "FILESTORE_SERVER__STATIC_HITS": "true"})
    static_token = filestore_token(static_env)
    static_fs = Server("filestore (static_hits)",
                       [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore-static.log", static_env, port=static_fs_port,
                       workers=args.workers)

    prefix = work / "nginx"
    direct_port, accel_port = free_port(), free_port()
    nginx = nginx_server(args.nginx, prefix, logs / "nginx.log", direct_port, data_dir / "files",
                         http=NGINX_HTTP.format(prefix=prefix),
                         after=f"  include {prefix}/filestore.conf;\n")
    access_log = prefix / "logs/access.log"
    (prefix / "filestore.conf").write_text(deploy_conf(accel_port, fs_port, data_dir,
                                                       access_log))
    # The second nginx's reference server block (on a port of its own) is not measured.
    static_prefix = work / "nginx-static"
    static_port = free_port()
    static_nginx = nginx_server(args.nginx, static_prefix, logs / "nginx-static.log",
                                free_port(), static_dir / "files",
                                http=NGINX_STATIC_HTTP.format(prefix=static_prefix),
                                after=f"  include {static_prefix}/filestore.conf;\n")
    static_nginx.name = "nginx (static)"
    static_log = static_prefix / "logs/access.log"
    (static_prefix / "filestore.conf").write_text(deploy_conf(static_port, static_fs_port,
                                                              static_dir, static_log))

    results: dict[tuple[str, str], Measurement] = {}
    with running(filestore), running(static_fs), running(nginx), running(static_nginx):
        put_test_files(fs_port, token, files)
        put_test_files(static_fs_port, static_token, files)
        time.sleep(1)  # let every worker finish importing the app
        hits_log = (static_dir / "hits.log").exists()
        log(f"{static_dir / 'hits.log'}: {'opened' if hits_log else 'ABSENT'}")
        urls = {"nginx": (direct_port, "/{}.bin"), "nginx+filestore": (accel_port, "/files/{}.bin"),
                "nginx+static": (static_port, "/files/{}.bin"),
                "filestore": (fs_port, "/files/{}.bin")}
        for label, data in files.items():
            check_offloaded(accel_port, access_log, f"/files/{label}.bin", data)
            check_static(static_port, static_log, static_dir, f"/files/{label}.bin", data)
            found = measure_interleaved(
                {target: (port, path.format(label)) for target, (port, path) in urls.items()},
                label, data, args, lua)
            results.update({(target, label): m for target, m in found.items()})
        put_cost = measure_put_cost(args, {"plain": (fs_port, token),
                                           "static": (static_fs_port, static_token)}
                                    ) if args.puts else None
    problems = log_summary("filestore log", filestore.log_path, LOG_MARKS)
    problems += log_summary("filestore (static_hits) log", static_fs.log_path, LOG_MARKS)
    problems += log_summary("nginx error log", prefix / "logs/error.log", NGINX_MARKS)
    static_errors = static_prefix / "logs/error.log"
    problems += log_summary("nginx (static) error log", static_errors, NGINX_MARKS)
    if not hits_log:
        problems.append(f"filestore did not open {static_dir / 'hits.log'}: nginx's static "
                        "hits were not counted")

    print()
    print(f"GET throughput, each filestore {args.workers} worker(s), each nginx {nproc()} "
          f"worker(s); wrk {args.duration}s x {args.runs} run(s) after a {args.warmup}s "
          f"warm-up, median; MB/s = payload 10^6 bytes/s; all on {HOST}")
    print(versions_text(found_versions))
    print(f"static hits log (DATA/hits.log): {'opened' if hits_log else 'not opened'}")
    print()
    print_table(results, args.sizes)
    print()
    print_commands(results, args.sizes, TARGETS, "the reporter of bench/serve.py")
    if put_cost is not None:
        print()
        print_put_cost(put_cost)
    return finish(args, found_versions, {"hits_log_opened": hits_log}, results,
                  busy_before, problems, {"put_cost": put_cost})


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_tools("bench/accel.py", "filestore-bench-accel-", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
