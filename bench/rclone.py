"""rclone comparison: cold and warm reads of one object through filestore's read-through cache
and through `rclone serve http --vfs-cache-mode full`, both over the same moto bucket.

What is measured
    One `moto_server` on 127.0.0.1 is the S3 store. One object of --size random bytes (default
    32 MiB) is made "only in the cloud" exactly as bench/miss.py does it (PUT into filestore with
    `upload.delay = 0s`, wait for the upload, delete the cached copy). Two readers of that same
    object in that same bucket are then measured with the same stdlib client (a fresh
    connection per GET, the body read in 1 MiB reads, SHA-256 checked):

    - filestore: `filestore serve --workers 1` with the remote; a cold GET is a cache miss (the
      cached copy is deleted again before each one, once the previous fill has finished); a
      warm GET is served from `data_dir/cache/`.
    - rclone: `rclone serve http` of the bucket's prefix with `--vfs-cache-mode full`, a fresh
      process and an empty cache directory for every cold GET, after one unmeasured GET of a
      small object beside it (so its directory listing and connection to moto are warm, as
      filestore's are); a warm GET is served from its VFS cache.

    One unmeasured cold GET of each comes first. Medians of --runs cold and --warm-runs warm
    GETs; the ratios are filestore / rclone (below 1x: filestore is faster). There is no
    target: rclone is context, the targets of a cache miss are bench/miss.py's.

    Debian's rclone refuses to start while AWS_CA_BUNDLE is set, so it runs without it.

Usage
    python bench/rclone.py [--size 32MiB] [--runs 3] [--warm-runs 5] [--timeout 60]
                           [--json PATH] [--keep]

Needs rclone (Debian: `apt-get install rclone`; exits 2 without it) and moto's server.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    GIB,
    HOST,
    MIB,
    BenchError,
    Process,
    add_output_options,
    args_json,
    find_tool,
    free_port,
    log,
    nproc,
    package_versions,
    parse_size,
    print_rows,
    run_main,
    started,
    write_json,
)
from miss import (
    BUCKET,
    COLD_PATH,
    PREFIX,
    Filestore,
    Results,
    evict,
    fill_done,
    make_cold,
    wait_until,
    write_payload,
)
from s3lib import ACCESS_KEY, REGION, SECRET_KEY, Moto

PRIMER_PATH = "bench/miss/primer.bin"  # a small object beside the measured one, for rclone
POLL_SECONDS = 0.01
PORT_TIMEOUT = 0.2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/rclone.py",
        description="Cold and warm GETs of one object through filestore vs rclone serve http "
                    "--vfs-cache-mode full over the same moto bucket.")
    parser.add_argument("--size", type=parse_size, default=32 * MIB,
                        help="size of the object (default 32MiB)")
    parser.add_argument("--runs", type=int, default=3, help="cold GETs of each (default 3)")
    parser.add_argument("--warm-runs", type=int, default=5, help="warm GETs of each (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds any one GET or wait may take (default 60)")
    add_output_options(parser, "payload, data directory, rclone cache, server logs")
    args = parser.parse_args(argv)
    if not 2 <= args.size <= 4 * GIB:
        parser.error("--size must be from 2 bytes to 4GiB (it is held in memory)")
    if args.runs < 1 or args.warm_runs < 1:
        parser.error("--runs and --warm-runs must be at least 1")
    return args


def timed_get(port: int, url_path: str, size: int, expected: str, timeout: float
              ) -> tuple[float, float]:
    """(TTFB ms, total ms) of one GET on a fresh connection, from the connect; BenchError unless
    it answers 200 with exactly the expected bytes."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    first = None
    begin = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", url_path, headers={"Connection": "close"})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET :{port}{url_path} -> {response.status}: "
                             f"{response.read()[:300]!r}")
        while got < size:
            count = response.readinto(view[got:got + min(MIB, size - got)])
            if not count:
                break
            if first is None:
                first = time.perf_counter()
            got += count
        last = time.perf_counter()
        extra = response.read(1)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"GET :{port}{url_path} failed after {got} bytes: {exc!r}") from None
    finally:
        conn.close()
    if got != size or extra or first is None:
        raise BenchError(f"GET :{port}{url_path}: {got}{'+' if extra else ''} bytes, "
                         f"expected {size}")
    if hashlib.sha256(buffer).hexdigest() != expected:
        raise BenchError(f"GET :{port}{url_path}: wrong bytes (SHA-256)")
    return (first - begin) * 1000, (last - begin) * 1000


def rclone_version(rclone: str) -> str:
    out = subprocess.run([rclone, "version"], capture_output=True, text=True, check=False)
    return (out.stdout.splitlines() or ["?"])[0].removeprefix("rclone ").strip()


def rclone_process(rclone: str, work: Path, moto_url: str, port: int, run: int) -> Process:
    """`rclone serve http` of s3://BUCKET/PREFIX at moto, full VFS cache in a fresh directory."""
    env = {k: v for k, v in os.environ.items()
           if k != "AWS_CA_BUNDLE" and not k.startswith("RCLONE_")}
    env.update({
        "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto_url, "RCLONE_CONFIG_MOTO_REGION": REGION,
        "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true",
    })
    cache = work / f"rclone-cache-{run}"
    argv = [rclone, "serve", "http", f"moto:{BUCKET}/{PREFIX}", "--addr", f"{HOST}:{port}",
            "--vfs-cache-mode", "full", "--cache-dir", str(cache), "--config", "/dev/null"]
    return Process(f"rclone serve http ({run})", argv, work / "rclone.log", env,
                   log_command=True)


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def run(args: argparse.Namespace, work: Path, rclone: str) -> int:
    started_at = time.monotonic()
    size, timeout = args.size, args.timeout
    source = work / "cold.bin"
    sha = write_payload(source, size)
    primer = os.urandom(4096)
    moto = Moto(work)
    fs = Filestore(work / "data", moto.url, work / "filestore.log")
    cold: dict[str, list[tuple[float, float]]] = {"filestore": [], "rclone": []}
    warm: dict[str, list[tuple[float, float]]] = {"filestore": [], "rclone": []}
    try:
        moto.start(POLL_SECONDS, PORT_TIMEOUT)
        moto.client.create_bucket(Bucket=BUCKET)
        make_cold(fs, moto, source, size, timeout, Results())
        moto.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{PRIMER_PATH}", Body=primer)

        # filestore: cold GETs (a miss each), then warm ones from its cache area.
        with fs.serving("1h") as (process, port):
            url = f"/files/{COLD_PATH}"
            for n in range(args.runs + 1):  # run 0: the unmeasured warm-up
                timing = timed_get(port, url, size, sha, timeout)
                wait_until(process, fill_done(fs, COLD_PATH), "the fill to finish", timeout)
                if n:
                    cold["filestore"].append(timing)
                if n < args.runs:
                    evict(fs, COLD_PATH)
            for _ in range(args.warm_runs):
                warm["filestore"].append(timed_get(port, url, size, sha, timeout))

        # rclone: a fresh process and cache for every cold GET; the last one's warm GETs.
        primer_sha = hashlib.sha256(primer).hexdigest()
        for n in range(args.runs + 1):
            port = free_port()
            with started(rclone_process(rclone, work, moto.url, port, n), port,
                         POLL_SECONDS, PORT_TIMEOUT):
                timed_get(port, f"/{PRIMER_PATH}", len(primer), primer_sha, timeout)
                timing = timed_get(port, f"/{COLD_PATH}", size, sha, timeout)
                if n:
                    cold["rclone"].append(timing)
                if n == args.runs:
                    for _ in range(args.warm_runs):
                        warm["rclone"].append(timed_get(port, f"/{COLD_PATH}", size, sha,
                                                        timeout))
    finally:
        moto.stop()

    def figures(kind: dict[str, list[tuple[float, float]]], target: str) -> dict[str, Any]:
        return {"ttfb_ms": med([t for t, _ in kind[target]]),
                "total_ms": med([t for _, t in kind[target]]),
                "runs": [{"ttfb_ms": t, "total_ms": s} for t, s in kind[target]]}

    results: dict[str, Any] = {
        "config": args_json(args),
        "versions": {"python": sys.version.split()[0], "rclone": rclone_version(rclone),
                     **package_versions("filestore", "moto", "aioboto3")},
        "cpus": nproc(),
    }
    for name, kind in (("cold", cold), ("warm", warm)):
        fs_fig, rc_fig = figures(kind, "filestore"), figures(kind, "rclone")
        results[name] = {"filestore": fs_fig, "rclone": rc_fig,
                         "ttfb_ratio": fs_fig["ttfb_ms"] / rc_fig["ttfb_ms"],
                         "total_ratio": fs_fig["total_ms"] / rc_fig["total_ms"]}

    print()
    print(f"{size / MIB:g} MiB object, {args.runs} cold / {args.warm_runs} warm GET(s) each, "
          "median ms; ratio = filestore / rclone")
    rows = [["GET", "filestore TTFB", "rclone TTFB", "ratio", "filestore total", "rclone total",
             "ratio"]]
    for name in ("cold", "warm"):
        r = results[name]
        rows.append([name, f"{r['filestore']['ttfb_ms']:.1f}", f"{r['rclone']['ttfb_ms']:.1f}",
                     f"{r['ttfb_ratio']:.2f}x", f"{r['filestore']['total_ms']:.1f}",
                     f"{r['rclone']['total_ms']:.1f}", f"{r['total_ratio']:.2f}x"])
    print_rows(rows, right_align=True)
    results["elapsed_s"] = time.monotonic() - started_at
    write_json(args.json, results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rclone = find_tool("rclone")
    if rclone is None:
        print("bench/rclone.py: rclone not found; install it (Debian: apt-get install -y "
              "rclone)", file=sys.stderr)
        return 2
    log(f"rclone {rclone_version(rclone)}")
    return run_main("bench/rclone.py", "filestore-bench-rclone-", args.keep,
                    lambda work: run(args, work, rclone))


if __name__ == "__main__":
    sys.exit(main())
