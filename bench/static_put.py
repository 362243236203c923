"""What `server.static_hits` adds to a PUT: 1 KiB PUT latency with the static tree vs without.

What is measured
    Two `filestore serve` processes (1 worker each, `upload.delay = 1h`, fresh data directories
    under /tmp), one with `server.static_hits = true` (each PUT also claims nginx's ETag in the
    registry and hard-links the file into DATA/static/files/, static.py), one without. --rounds
    rounds (default 10), the sides in turns, each round --per-round sequential PUTs (default 50)
    of 1 KiB to new paths over one keep-alive connection. Reported: each side's median and p95,
    the ratio of the medians (static / plain) and each round's. The static side must hold a link
    for every path PUT.

Why
    The static tree makes hits nginx's; its price is paid on the write path, measured here
    against the same server without it, in the same run.

Usage
    python bench/static_put.py [--rounds 10] [--per-round 50]

Stdlib and filestore only; everything binds 127.0.0.1. About 15 s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, name: str, static: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"filestore-bench-static-put-{name}-"))
        self.port = free_port()
        config = self.dir / "config.toml"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nworkers = 1\n'
            f'static_hits = {"true" if static else "false"}\n'
            f'[storage]\ndata_dir = "{self.dir}/data"\n[upload]\ndelay = "1h"\n')
        self.log = open(self.dir / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "filestore", "serve", "--config",
                                      str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()
        self.token = (self.dir / "data" / "token").read_text().strip()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                probe.request("GET", "/readyz")
                if probe.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"bench/static_put.py: a server did not start; see {self.log.name}")

    def put(self, path: str, body: bytes) -> float:
        began = time.perf_counter()
        self.conn.request("PUT", f"/files/{path}", body,
                          {"Authorization": f"Bearer {self.token}"})
        response = self.conn.getresponse()
        response.read()
        if response.status not in (200, 201):
            raise SystemExit(f"bench/static_put.py: PUT {path}: {response.status}")
        return time.perf_counter() - began

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/static_put.py",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=50)
    args = parser.parse_args()
    body = os.urandom(1024)
    servers = {"plain": Server("plain", False), "static": Server("static", True)}
    try:
        times: dict[str, list[float]] = {name: [] for name in servers}
        medians: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for name, server in servers.items():
                taken = [server.put(f"r{round_}/f{i}.bin", body) for i in range(args.per_round)]
                times[name] += taken
                medians[name].append(statistics.median(taken))
        for name, taken in times.items():
            taken.sort()
            print(f"{name:6}  median {statistics.median(taken) * 1e3:.3f} ms  "
                  f"p95 {taken[int(len(taken) * 0.95)] * 1e3:.3f} ms  ({len(taken)} PUTs)")
        ratio = statistics.median(times["static"]) / statistics.median(times["plain"])
        rounds = ", ".join(f"{s / p:.2f}" for s, p in zip(medians["static"], medians["plain"],
                                                             strict=True))
        print(f"static / plain: {ratio:.2f}x (each round's: {rounds})")
        links = servers["static"].dir / "data" / "static" / "files"
        linked = sum(1 for _ in links.rglob("*.bin")) if links.exists() else 0
        if linked != len(times["static"]):
            raise SystemExit(f"bench/static_put.py: {linked} links for {len(times['static'])} "
                             "PUTs on the static side")
        print(f"static side: a link for each of the {linked} paths")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
