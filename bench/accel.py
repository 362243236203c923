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
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchlib import (
    HOST,
    BenchError,
    add_output_options,
    filestore_command,
    filestore_token,
    free_port,
    http_request,
    log_problems,
    nproc,
    versions_text,
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
TARGETS = ("nginx", "nginx+filestore", "filestore")

# One nginx: the reference server block of bench/serve.py, and the shipped one included as it
# is. Only the check requests (`?check=1`) are logged: logging is no part of what is measured.
NGINX_HTTP = """\
  map $request_uri $logged {{ default 0; "~[?]check=1$" 1; }}
  log_format accel '$request_uri $uri $status $upstream_status';
  access_log {prefix}/logs/access.log accel if=$logged;
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
    add_wrk_options(parser, "1k,32m", "filestore")
    add_output_options(parser, "data, configs, server logs")
    args = parser.parse_args(argv)
    check_wrk_options(parser, args)
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
            request_uri, uri, logged_status, *upstream = line.split(" ")
            if request_uri == url_path and uri.startswith(PREFIX):
                if logged_status == "200" and upstream == ["200"]:
                    return
                raise BenchError(f"nginx: {url_path} was not offloaded cleanly: {line}")
        time.sleep(0.2)
    raise BenchError(f"nginx: no internal redirect for {url_path} in {access_log}; is "
                     "server.accel_redirect set and the location right?")


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
                                           "fs alone / nginx": vs_nginx("filestore")})
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
    busy_before, lua, logs, data_dir, files = set_up(work, args.sizes)
    fs_cmd = filestore_command()

    # filestore with the offload on; uploads off, so every file stays in files/ for the run.
    fs_port = free_port()
    env = serve_env(data_dir, fs_port)
    env.update({"FILESTORE_SERVER__ACCEL_REDIRECT": PREFIX, "FILESTORE_UPLOAD__ENABLED": "false"})
    token = filestore_token(env)
    filestore = Server("filestore", [*fs_cmd, "serve", "--workers", str(args.workers)],
                       logs / "filestore.log", env, port=fs_port, workers=args.workers)

    prefix = work / "nginx"
    direct_port, accel_port = free_port(), free_port()
    nginx = nginx_server(args.nginx, prefix, logs / "nginx.log", direct_port, data_dir / "files",
                         http=NGINX_HTTP.format(prefix=prefix),
                         after=f"  include {prefix}/filestore.conf;\n")
    (prefix / "filestore.conf").write_text(deploy_conf(accel_port, fs_port, data_dir))

    results: dict[tuple[str, str], Measurement] = {}
    with running(filestore), running(nginx):
        put_test_files(fs_port, token, files)
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
    print(versions_text(found_versions))
    print()
    print_table(results, args.sizes)
    print()
    print_commands(results, args.sizes, TARGETS, "the reporter of bench/serve.py")
    return finish(args, found_versions, {}, results, busy_before, problems)


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_tools("bench/accel.py", "filestore-bench-accel-", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
