"""The `filestore` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import counters, file_row, queue_row, s3_overrides, wait_for

FILESTORE = [sys.executable, "-m", "filestore"]


def run(args, env=None, cwd=None, timeout=30):
    return subprocess.run(FILESTORE + args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_help_lists_commands():
    result = run(["--help"])
    assert result.returncode == 0
    assert "serve" in result.stdout and "token" in result.stdout


@pytest.mark.parametrize(
    ("toml", "needle"),
    [('[storage]\nmin_free = "lots"\n', "storage.min_free = 'lots'"),
     ('[server]\nworkers = 0\n', "server.workers = 0"),
     ('[serverr]\n', "unknown section [serverr]")],
)
def test_bad_config_exits_2_with_one_line(tmp_path, toml, needle):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run(["serve", "--config", str(config)])
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_config_exits_2(tmp_path):
    result = run(["token", "--config", str(tmp_path / "nope.toml")])
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_token_is_generated_once_and_private(tmp_path):
    env = {"FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "d")}
    first = run(["token"], env=env)
    assert first.returncode == 0
    token = first.stdout.strip()
    assert len(token) >= 32 and "\n" not in token
    assert run(["token"], env=env).stdout.strip() == token
    assert (tmp_path / "d" / "token").stat().st_mode & 0o777 == 0o600


def test_unwritable_data_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run(["token"], env={"FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "file" / "d")})
    assert result.returncode == 2
    assert "storage.data_dir" in result.stderr and "Traceback" not in result.stderr


def test_serve_with_no_config_then_ctrl_c(tmp_path, serve_process):
    """The README's first command: no config at all, data in ./filestore-data."""
    server = serve_process(None, cwd=tmp_path).start()
    with server.client() as client:
        assert client.put("/files/hello.txt", content=b"hi").status_code == 201
        assert client.get("/files/hello.txt").content == b"hi"
    assert (tmp_path / "filestore-data" / "files" / "hello.txt").read_bytes() == b"hi"
    code, out = server.stop(signal.SIGINT)
    assert code == 0, out
    assert f"{server.url}/files/" in out
    # Where the token is, never the token itself (this output goes to the journal).
    assert "new API token written to" in out and "`filestore token` prints it" in out
    assert server.token not in out
    assert "Traceback" not in out


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_streaming_put_keeps_memory_flat(tmp_path, serve_process):
    """A 512 MiB PUT through a real `filestore serve` raises its peak RSS by < 64 MiB."""
    server = serve_process(tmp_path / "d").start()
    # `filestore serve` runs uvicorn in-process with one worker: measure that process.
    before = _peak_rss_kib(server.proc.pid)
    block = os.urandom(1024 * 1024)

    def body():
        for _ in range(512):
            yield block

    with server.client() as client:
        r = client.put("/files/big.bin", content=body(), timeout=120)
    assert r.status_code == 201 and r.json()["size"] == 512 * 1024 * 1024
    growth_mib = (_peak_rss_kib(server.proc.pid) - before) / 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.1f} MiB"


def _uploaded_files(make_server, count, size):
    server = make_server(upload__delay="0s")
    with server.client() as client:
        for i in range(count):
            assert client.put(f"/files/c/{i}.bin", content=os.urandom(size)).status_code == 201
    wait_for(lambda: counters(server)["cache.entries"] == count)
    return server


def test_stats_while_a_server_runs(make_server):
    server = _uploaded_files(make_server, 3, 1000)
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir)}
    result = run(["stats", "--json"], env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["files"] == {"count": 3, "bytes": 3000, "local": {"count": 0, "bytes": 0},
                                "remote": {"count": 3, "bytes": 3000}}
    assert figures["cache"]["entries"] == 3 and figures["uploads"]["done"] == 3
    human = run(["stats"], env=env)
    assert human.returncode == 0
    assert "files     3 (2.9 KiB)" in human.stdout and "3 entries" in human.stdout


def test_gc_evicts_down_to_the_limits_while_a_server_runs(make_server):
    server = _uploaded_files(make_server, 4, 1024 * 1024)
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir),
           "FILESTORE_CACHE__MAX_SIZE": "2MiB", "FILESTORE_CACHE__MIN_FREE": "0"}
    dry = run(["gc", "--dry-run"], env=env)
    assert dry.returncode == 0 and "would evict at least 2.0 MiB" in dry.stdout
    assert counters(server)["cache.entries"] == 4  # a dry run changes nothing
    result = run(["gc"], env=env)
    assert result.returncode == 0, result.stderr
    assert "evicted 2 entries (2.0 MiB)" in result.stdout
    assert counters(server)["cache.bytes"] == 2 * 1024 * 1024
    again = run(["gc"], env=env)
    assert again.returncode == 0 and "nothing to evict" in again.stdout
    with server.client() as client:  # the evicted ones read through from the cloud
        for i in range(4):
            assert client.get(f"/files/c/{i}.bin").status_code == 200


def test_queue_list_retry_and_drop(make_server, moto, bucket, tmp_path):
    overrides = {**s3_overrides(moto, "late-bucket"), "upload__retry_base": "0.05s"}
    data_dir = tmp_path / "data"
    server = make_server(data_dir, upload__delay="0s", **overrides)
    with server.client() as client:
        client.put("/files/a.txt", content=b"x")
        wait_for(lambda: (queue_row(server, "a.txt") or {"state": ""})["state"] == "failed")
    server.stop()
    env = {"FILESTORE_STORAGE__DATA_DIR": str(data_dir)}
    listed = run(["queue", "list", "--failed", "--json"], env=env)
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert item["path"] == "a.txt" and item["state"] == "failed" and item["op"] == "upload"
    assert "NoSuchBucket" in item["last_error"]
    human = run(["queue", "list"], env=env)
    assert human.stdout.startswith("failed   upload") and "a.txt" in human.stdout
    assert run(["queue", "retry"], env=env).returncode == 2  # a PATH or --all
    moto.client().create_bucket(Bucket="late-bucket")  # the operator fixed the cause
    retried = run(["queue", "retry", "--all"], env=env)
    assert retried.returncode == 0 and "1 failed entry due again" in retried.stdout
    assert queue_row(server, "a.txt")["state"] == "pending"
    server = make_server(data_dir, upload__delay="1h", **overrides)  # a.txt is due now
    wait_for(lambda: queue_row(server, "a.txt") is None and file_row(server, "a.txt")[
        "location"] == "remote")
    with server.client() as client:
        client.put("/files/b.txt", content=b"y")  # due in an hour
    dropped = run(["queue", "drop", "b.txt"], env=env)
    assert dropped.returncode == 0 and "dropped b.txt" in dropped.stdout
    assert queue_row(server, "b.txt") is None and file_row(server, "b.txt") is not None
    assert run(["queue", "drop", "b.txt"], env=env).returncode == 1
    hostile = run(["queue", "drop", "../etc/passwd"], env=env)
    assert hostile.returncode == 1 and len(hostile.stderr.strip().splitlines()) == 1


def test_backup_is_a_consistent_registry_copy_while_serving(make_server, tmp_path):
    server = _uploaded_files(make_server, 3, 100)
    target = tmp_path / "backups" / "registry.sqlite3"
    target.parent.mkdir()
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir)}
    result = run(["backup", str(target)], env=env)
    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT count(*) FROM files").fetchone()[0] == 3
        assert copy.execute("SELECT value FROM counters WHERE name = 'files'").fetchone()[0] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["registry.sqlite3"]


def test_import_a_tree_while_serving_then_resume(make_server, tmp_path):
    tree = tmp_path / "old-uploads"
    (tree / "2024" / "05").mkdir(parents=True)
    big = os.urandom(2 * 1024 * 1024 + 3)
    (tree / "2024" / "05" / "call.wav").write_bytes(big)
    (tree / "fax.pdf").write_bytes(b"%PDF fax")
    (tree / "bad\x01name.txt").write_bytes(b"control character")
    (tree / "link.txt").symlink_to(tree / "fax.pdf")
    server = make_server(upload__delay="1h")
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir)}
    result = run(["import", str(tree), "--prefix", "media"], env=env)
    assert result.returncode == 1  # two things could not be taken, and it says which
    assert "2 files (2.0 MiB) imported, 0 already there, 2 skipped" in result.stdout
    assert "bad\x01name.txt" in result.stderr and "link.txt: not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    with server.client() as client:
        r = client.get("/files/media/2024/05/call.wav")
        assert r.status_code == 200 and r.content == big
        assert r.headers["content-type"] in ("audio/x-wav", "audio/wav")
        assert client.get("/files/media/fax.pdf").content == b"%PDF fax"
    assert queue_row(server, "media/fax.pdf")["op"] == "upload"  # queued like any PUT
    assert (tree / "fax.pdf").read_bytes() == b"%PDF fax"  # the source is only read
    again = run(["import", str(tree), "--prefix", "media"], env=env)
    assert "0 files (0 B) imported, 2 already there, 2 skipped" in again.stdout
    inside = run(["import", str(server.settings.data_dir / "files")], env=env)
    assert inside.returncode == 2 and "inside the data directory" in inside.stderr
