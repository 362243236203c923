"""Offload benchmark: nginx + filestore with `server.accel_redirect` against nginx alone.

What is measured
    GET throughput of the same bytes (random files of each --sizes size, default 1 KiB and
    32 MiB, PUT through filestore into its data directory's `files/`) from three setups:

    1. nginx serving `data_dir/files/` itself (`root`, sendfile, tcp_nopush, open_file_cache, as
       in bench/serve.py): the reference;
    2. nginx with `deploy/nginx.conf` (its own file, port, upstream and data directory
       substituted) in front of `filestore serve --workers N` with
       `server.accel_redirect = "/_filestore/"`: every GET is proxied to filestore, which does
       its auth, lookup, open-and-check, validators and accounting and answers with
       X-Accel-Redirect; nginx then sends the file with sendfile;
    3. for context, filestore alone on its own port (it sends the bytes itself).

    Both nginx setups are one nginx with one worker per core. Each figure comes from
    `wrk -t2 -c32 -dDURATION URL` (`-c4` for 32 MiB), after an unrecorded warm-up run, as the
    median over --runs runs (the wrk runner of bench/serve.py). The targets' runs are taken in
    turns, and a ratio is the median of the runs' ratios (run i of one target over run i of
    the other, taken seconds apart), so a load that drifts during the benchmark moves both
    sides of each ratio alike. Before measuring, every URL is fetched once and must return 200
    and exactly the file's bytes; through nginx, nginx's access log must also show the internal
    redirect, so the figure is the offload's and not filestore sending the bytes behind nginx.

Why
    The targets compare the product's production setup with the physical limit of the machine:
    32 MiB through nginx + filestore >= 0.95x nginx alone (bytes move by sendfile either way),
    1 KiB >= 0.3x (per-request cost: a proxy hop to filestore and back on top of nginx's own).

Usage
    python bench/accel.py [--duration 5s] [--runs 1] [--sizes 1k,32m] [--workers 2]
                          [--warmup 2s] [--json PATH] [--keep]

Needs nginx and wrk (Debian: `apt-get install nginx wrk`); exits 2 without them. Everything
binds 127.0.0.1, each server on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import (
    HOST,
    BenchError,
    add_output_options,
    filestore_command,
    filestore_token,
    free_port,
    http_request,
    log,
    log_problems,
    nproc,
    print_rows,
    run_main,
)
from serve import (
    LOG_MARKS,
    WRK_REPORT_LUA,
    Measurement,
    Server,
    WrkRun,
    check_get,
    cpu_busy,
    find_tool,
    make_test_files,
    parse_duration,
    parse_sizes,
    run_wrk,
    running,
    serve_env,
    versions,
    wrk_argv,
)

PREFIX = "/_filestore/"
DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
TARGET_1K_RPS_RATIO = 0.3
TARGET_32M_MBPS_RATIO = 0.95
TARGETS = ("nginx", "nginx+filestore", "filestore")

# One nginx: the reference server block, and the shipped one included as it is.
NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  # Only the check requests (`?check=1`) are logged: logging is no part of what is measured.
  map $request_uri $logged {{ default 0; "~[?]check=1$" 1; }}
  log_format accel '$request_uri $uri $status $upstream_status';
  access_log {prefix}/logs/access.log accel if=$logged;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen {host}:{direct_port};
    access_log off;
    open_file_cache max=1000 inactive=60s;
    root {root};
    location / {{ }}
  }}
  include {prefix}/filestore.conf;
}}
"""


def deploy_conf(port: int, upstream_port: int, data_dir: Path) -> str:
    """`deploy/nginx.conf` with its port, upstream and data directory substituted."""
    text = DEPLOY_CONF.read_text()
    for old, new in (("listen 80;", f"listen {HOST}:{port};"),
                     ("server 127.0.0.1:8080;", f"server {HOST}:{upstream_port};"),
                     ("alias /srv/filestore/", f"alias {data_dir}/")):
        if old not in text:
            raise BenchError(f"{DEPLOY_CONF} no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/accel.py",
        description="GET throughput of nginx + filestore (X-Accel-Redirect) vs nginx alone.",
    )
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("5s"),
                        help="wrk duration per measured run (default 5s)")
    parser.add_argument("--warmup", type=parse_duration, default=parse_duration("2s"),
                        help="unrecorded wrk run before each target/size (default 2s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measured runs per target/size; the median is reported (default 1)")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1k,32m"),
                        help="comma-separated file sizes (default 1k,32m)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of filestore (default 2)")
    add_output_options(parser, "data, configs, server logs")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be from 1 to 64")
    return args


def check_offloaded(port: int, access_log: Path, url_path: str, expected: bytes) -> None:
    """A GET of `url_path` returns `expected`, and nginx's access log shows it answered from
    the internal location after one upstream answer (filestore's redirect): nginx sent the
    file, not filestore."""
    url_path += "?check=1"
    status, body = http_request(port, "GET", url_path)
    if status != 200 or body != expected:
        raise BenchError(f"nginx+filestore: GET {url_path} -> {status}, {len(body)} bytes")
    deadline = time.monotonic() + 5  # nginx writes the line once the response is sent
    while time.monotonic() < deadline:
        text = access_log.read_text() if access_log.exists() else ""
        for line in text.splitlines():
            request_uri, uri, status, *upstream = line.split(" ")
            if request_uri == url_path and uri.startswith(PREFIX):
                if status == "200" and upstream == ["200"]:
                    return
                raise BenchError(f"nginx: {url_path} was not offloaded cleanly: {line}")
        time.sleep(0.2)
    raise BenchError(f"nginx: no internal redirect for {url_path} in {access_log}; is "
                     "server.accel_redirect set and the location right?")


def measure_interleaved(
    urls: dict[str, tuple[int, str]], label: str, data: bytes, args: argparse.Namespace,
    lua: Path,
) -> dict[str, Measurement]:
    """Each target's runs, taken in turns (run 1 of every target, then run 2, ...): on a
    machine shared with other work, a ratio then compares figures taken in the same minute."""
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


def paired_ratio(numerator: Measurement, denominator: Measurement) -> float:
    """The median of the ratios of runs taken one after the other (run i of each): steadier
    than the ratio of the medians when the machine's load drifts during the benchmark."""
    return statistics.median(a.rps / b.rps for a, b in zip(numerator.runs, denominator.runs,
                                                           strict=True))


def print_table(results: dict[tuple[str, str], Measurement],
                sizes: list[tuple[str, int]]) -> None:
    head = ["size"]
    for target in TARGETS:
        head += [f"{target} req/s", f"{target} MB/s"]
    head += ["nginx+fs / nginx", "fs alone / nginx"]
    rows = [head]
    for label, _ in sizes:
        row = [label]
        for target in TARGETS:
            m = results[target, label]
            row += [f"{m.rps:,.0f}", f"{m.mbps:,.1f}"]
        reference = results["nginx", label]
        row += [f"{paired_ratio(results[target, label], reference):.2f}x"
                for target in ("nginx+filestore", "filestore")]
        rows.append(row)
    print_rows(rows, right_align=True)
    print()
    rows = [["size"] + [f"{t} p50/p99 ms" for t in TARGETS] + [f"{t} errors" for t in TARGETS]]
    for label, _ in sizes:
        ms = [results[t, label] for t in TARGETS]
        rows.append([label, *(f"{m.p50_ms:.2f} / {m.p99_ms:.2f}" for m in ms),
                     *(str(m.errors) for m in ms)])
    print_rows(rows, right_align=True)
    targets = {"1k": TARGET_1K_RPS_RATIO, "32m": TARGET_32M_MBPS_RATIO}
    notes = []
    for label, _ in sizes:
        if label in targets:
            ratio = paired_ratio(results["nginx+filestore", label], results["nginx", label])
            verdict = "met" if ratio >= targets[label] else "MISSED"
            notes.append(f"{label}: nginx+filestore / nginx {ratio:.2f}x, the median of the "
                         f"runs' ratios (target >= {targets[label]}x: {verdict})")
    if notes:
        print()
        print("targets:")
        for note in notes:
            print(f"  {note}")


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

    # filestore with the offload on; uploads off, so every file stays in files/ for the run.
    fs_port = free_port()
    env = serve_env(data_dir, fs_port)
    env.update({"FILESTORE_SERVER__ACCEL_REDIRECT": PREFIX, "FILESTORE_UPLOAD__ENABLED": "false"})
    token = filestore_token(env)
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore.log", env, port=fs_port, workers=args.workers)

    prefix = work / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True)
    direct_port, accel_port = free_port(), free_port()
    (prefix / "filestore.conf").write_text(deploy_conf(accel_port, fs_port, data_dir))
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "", workers=nproc(), prefix=prefix,
        host=HOST, direct_port=direct_port, root=data_dir / "files"))
    nginx = Server("nginx", [args.nginx, "-p", str(prefix), "-e", str(prefix / "logs/error.log"),
                             "-c", str(conf)], logs / "nginx.log",
                   port=direct_port, workers=nproc(), uvicorn=False)

    results: dict[tuple[str, str], Measurement] = {}
    with running(filestore), running(nginx):
        for label, data in files.items():
            status, reply = http_request(
                fs_port, "PUT", f"/files/{label}.bin", body=data,
                headers={"authorization": f"Bearer {token}",
                         "content-type": "application/octet-stream"})
            if status not in (200, 201):
                raise BenchError(f"filestore: PUT /files/{label}.bin -> {status}: {reply[:300]!r}")
        time.sleep(1)  # let every worker finish importing the app
        urls = {"nginx": (direct_port, "/{}.bin"), "nginx+filestore": (accel_port, "/files/{}.bin"),
                "filestore": (fs_port, "/files/{}.bin")}
        for label, data in files.items():
            check_offloaded(accel_port, prefix / "logs/access.log", f"/files/{label}.bin", data)
            found = measure_interleaved(
                {target: (port, path.format(label)) for target, (port, path) in urls.items()},
                label, data, args, lua)
            results.update({(target, label): m for target, m in found.items()})
    problems = [f"filestore log: {line}" for line in log_problems(filestore.log_path, LOG_MARKS)]
    error_log = prefix / "logs/error.log"
    problems += [f"nginx error log: {line}" for line in log_problems(
        error_log, ("[error]", "[crit]", "[alert]", "[emerg]"))]

    print()
    print(f"GET throughput, filestore {args.workers} worker(s), nginx {nproc()} worker(s); wrk "
          f"{args.duration}s x {args.runs} run(s) after a {args.warmup}s warm-up, median; "
          f"MB/s = payload 10^6 bytes/s; all on {HOST}")
    print(", ".join(f"{k} {v}" for k, v in found_versions.items()))
    print()
    print_table(results, args.sizes)
    print()
    print("wrk commands (report.lua: the reporter of bench/serve.py):")
    for target in TARGETS:
        for label, _ in args.sizes:
            print(f"  {target:<15} {results[target, label].command}")
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
                         "workers": args.workers},
            "results": [m.as_dict() for m in results.values()],
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
        print(f"bench/accel.py: {' and '.join(missing)} not found; install "
              f"{' '.join(missing)} (Debian: apt-get install -y nginx wrk)", file=sys.stderr)
        return 2

    def body(work: Path) -> int:
        found = versions(args.nginx, args.wrk)
        log("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
        return run(args, work, found)

    return run_main("bench/accel.py", "filestore-bench-accel-", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
