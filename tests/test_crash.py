"""`kill -9` of a real `filestore serve` while it uploads: nothing lost, nothing left open."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, s3_overrides, wait_for


def _counters(data_dir) -> dict[str, int]:
    conn = sqlite3.connect(data_dir / "registry.sqlite3", timeout=10)
    try:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_during_uploads_then_restart(tmp_path, moto, bucket, serve_process):
    data_dir = tmp_path / "data"
    overrides = {**s3_overrides(moto, bucket), "upload__delay": "0s",
                 "upload__concurrency": "3", "remote__multipart_threshold": "5MiB",
                 "remote__part_size": "5MiB"}
    rng = random.Random(7)
    bodies: dict[str, bytes] = {}
    for round_ in range(3):
        server = serve_process(data_dir, **overrides).start()
        with server.client() as client:
            for i in range(8):
                size = rng.choice([0, 1, 50_000, 11 * 1024 * 1024])
                path = f"r{round_}/{i}.bin"
                body = os.urandom(size)
                assert client.put(f"/files/{path}", content=body).status_code == 201
                bodies[path] = body  # acknowledged
        # Kill it while work is in flight: after the first upload of this round, before the last.
        done_before = _counters(data_dir)["uploads.done"]
        wait_for(lambda: _counters(data_dir)["uploads.done"] > done_before, timeout=60)  # noqa: B023
        server.kill()

    server = serve_process(data_dir, **overrides).start()
    wait_for(lambda: _counters(data_dir)["files.local"] == 0, timeout=120)
    c = _counters(data_dir)
    assert c["files"] == len(bodies) and c["files.remote"] == len(bodies)
    assert c["queue.upload.pending"] == 0 and c["queue.upload.failed"] == 0

    s3 = moto.client()
    for path, body in bodies.items():
        stored = s3.get_object(Bucket=bucket, Key=f"fs/{path}")["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(body).hexdigest(), path
    with server.client() as client:
        for path, body in bodies.items():
            assert client.get(f"/files/{path}").content == body
    wait_for(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None,
             timeout=30)
    assert list((data_dir / "tmp").iterdir()) == []


@pytest.mark.slow
def test_wrong_credentials_fail_clearly_and_others_flow(tmp_path, serve_process):
    """moto with real authentication: an unknown access key is refused with 403."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    moto_proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
         "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        def up() -> bool:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                return True
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30)
        server = serve_process(
            tmp_path / "data", upload__delay="0s", remote__url="s3://some-bucket/fs",
            remote__endpoint_url=f"http://127.0.0.1:{port}", remote__region="us-east-1",
            remote__access_key_id="AKIAWRONGWRONGWRONG", remote__secret_access_key="nope",
        ).start()
        with server.client() as client:
            for i in range(3):
                client.put(f"/files/f{i}.txt", content=b"x")
            wait_for(lambda: _counters(tmp_path / "data")["queue.upload.failed"] == 3)
            # the server keeps serving the files locally
            assert client.get("/files/f0.txt").content == b"x"
        conn = sqlite3.connect(tmp_path / "data" / "registry.sqlite3")
        errors = [row[0] for row in conn.execute("SELECT last_error FROM queue")]
        attempts = [row[0] for row in conn.execute("SELECT attempts FROM queue")]
        conn.close()
        assert all("InvalidAccessKeyId" in e for e in errors), errors
        assert attempts == [1, 1, 1]  # permanent: failed at once, not retried
        assert all("nope" not in e for e in errors)
    finally:
        moto_proc.kill()
        moto_proc.wait()


def _workers(supervisor: int) -> list[int]:
    """The worker processes uvicorn's supervisor spawned (not its resource tracker)."""
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except FileNotFoundError:
        return []
    found = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.append(pid)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.timeout(60)
def test_workers_stop_when_their_supervisor_is_killed(tmp_path, serve_process):
    """`kill -9` of the supervisor of `server.workers = 2`: its workers stop by themselves
    within seconds, so none goes on serving the data directory (or holding the port) beside
    the server started after it; that server then starts on the same port and directory."""
    server = serve_process(tmp_path / "data", server__workers="2").start()
    workers = wait_for(lambda: len(_workers(server.proc.pid)) == 2 and _workers(server.proc.pid))
    server.kill()
    wait_for(lambda: not any(_running(pid) for pid in workers), timeout=20)
    again = serve_process(tmp_path / "data", server__workers="2")
    again.port, again.url = server.port, server.url
    again.env["FILESTORE_SERVER__PORT"] = str(server.port)
    again.start()
    with again.client() as client:
        assert client.put("/files/after.txt", content=b"x").status_code == 201
    assert again.stop()[0] == 0
