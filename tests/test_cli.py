"""The `filestore` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "new API token" in out
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
