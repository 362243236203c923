"""The `filestore` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import wait_for

FILESTORE = [sys.executable, "-m", "filestore"]


def run(args, env=None, cwd=None, timeout=30):
    return subprocess.run(FILESTORE + args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def test_serve_with_no_config_then_ctrl_c(tmp_path):
    """The README's first command: no config at all, data in ./filestore-data."""
    port = free_port()
    env = {**os.environ, "FILESTORE_SERVER__PORT": str(port), "FILESTORE_STORAGE__MIN_FREE": "0"}
    env.pop("FILESTORE_CONFIG", None)
    proc = subprocess.Popen(FILESTORE + ["serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        wait_for(up, timeout=20)
        token = (tmp_path / "filestore-data" / "token").read_text().strip()
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.put(f"{url}/files/hello.txt", content=b"hi", headers=auth).status_code == 201
        assert httpx.get(f"{url}/files/hello.txt").content == b"hi"
        assert (tmp_path / "filestore-data" / "files" / "hello.txt").read_bytes() == b"hi"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/files/" in out
    assert "new API token" in out
    assert "Traceback" not in out


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_streaming_put_keeps_memory_flat(tmp_path):
    """A 512 MiB PUT through a real `filestore serve` raises its peak RSS by < 64 MiB."""
    port = free_port()
    env = {**os.environ, "FILESTORE_SERVER__PORT": str(port), "FILESTORE_STORAGE__MIN_FREE": "0",
           "FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "d")}
    proc = subprocess.Popen(FILESTORE + ["serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20)
        # `filestore serve` runs uvicorn in-process with one worker: measure that process.
        before = _peak_rss_kib(proc.pid)
        block = os.urandom(1024 * 1024)

        def body():
            for _ in range(512):
                yield block

        token = (tmp_path / "d" / "token").read_text().strip()
        r = httpx.put(f"{url}/files/big.bin", content=body(), timeout=120,
                      headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 201 and r.json()["size"] == 512 * 1024 * 1024
        growth_mib = (_peak_rss_kib(proc.pid) - before) / 1024
        assert growth_mib < 64, f"peak RSS grew by {growth_mib:.1f} MiB"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
