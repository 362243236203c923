"""Secrets at rest: a secret saved from the admin page is encrypted in the registry with the data
directory's key file, and stays out of its bytes, its WAL and `filestore backup` output; without
the key file the store says so in one line. Real servers, moto's real S3 server, real SQLite and
the `filestore` command as a subprocess where its stderr is what is tested."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import free_port, uploaded, wait_for

from filestore.cli import main

SLOW = {"upload__delay": "10m"}
KEY = "secrets.key"


def new_secret() -> str:
    return f"TopSecret-{uuid.uuid4().hex}"


def remote_settings(moto: Any, bucket: str, secret: str) -> dict[str, str]:
    return {"url": f"s3://{bucket}/sec", "endpoint_url": moto.url, "region": "us-east-1",
            "access_key_id": "test", "secret_access_key": secret}


def save(server: Any, changes: dict[str, Any]) -> Any:
    with server.client() as client:
        r = client.put("/admin/api/settings", json=changes)
    assert r.status_code == 200, r.text
    return r


def run(data: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it: its own process, its real stderr."""
    env = {k: v for k, v in os.environ.items() if k != "FILESTORE_CONFIG"}
    env.update({"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
                "FILESTORE_SERVER__PORT": str(free_port())})
    return subprocess.run([sys.executable, "-m", "filestore", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def cli(data: Path, *args: str) -> Any:
    """The command in this process (a subprocess costs a second of imports)."""
    result = CliRunner().invoke(main, list(args), env={
        "FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def stored_secret(data: Path, section: str = "remote") -> str:
    with contextlib.closing(sqlite3.connect(data / "registry.sqlite3")) as conn:
        row = conn.execute("SELECT value FROM settings WHERE section = ? AND key = ?",
                           (section, "secret_access_key")).fetchone()
    assert row is not None
    return str(row[0])


def registry_bytes(data: Path) -> bytes:
    """The registry file and its WAL, as they lie on disk."""
    return b"".join(path.read_bytes() for path in
                    (data / "registry.sqlite3", data / "registry.sqlite3-wal") if path.exists())


def test_a_saved_secret_is_encrypted_at_rest_and_in_backups(
        make_server: Any, moto: Any, bucket: str, tmp_path: Path) -> None:
    data, secret = tmp_path / "data", new_secret()
    server = make_server(data, upload__delay="0s")
    r = save(server, {"remote": remote_settings(moto, bucket, secret)})
    assert secret not in r.text

    key_file = data / KEY
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert stored_secret(data).startswith("enc:v1:")
    assert secret.encode() not in registry_bytes(data)
    with server.client() as client:
        assert secret not in client.get("/admin/api/settings").text
        # The server holds it decrypted, and uses it: an upload to moto goes through.
        assert server.store.settings.remote.secret_access_key == secret
        assert client.put("/files/up.txt", content=b"to the cloud").status_code == 201
    wait_for(lambda: uploaded(server, "up.txt"))
    assert moto.client().get_object(Bucket=bucket, Key="sec/up.txt")["Body"].read() == \
        b"to the cloud"

    backup = tmp_path / "backups" / "registry.backup"
    backup.parent.mkdir()
    result = cli(data, "backup", str(backup))
    assert result.exit_code == 0, result.output
    assert backup.stat().st_mode & 0o777 == 0o600
    copy = backup.read_bytes()
    assert secret.encode() not in copy and key_file.read_bytes().strip() not in copy
    assert b"enc:v1:" in copy  # the secret is in it, encrypted
    assert sorted(p.name for p in backup.parent.iterdir()) == ["registry.backup"]
    assert secret.encode() not in registry_bytes(data)

    # A restart reads it back with the key file.
    server.stop()
    again = make_server(data, **SLOW)
    assert again.store.settings.remote.secret_access_key == secret


def test_without_its_key_file_the_store_does_not_open_and_says_why(
        make_server: Any, moto: Any, bucket: str, tmp_path: Path) -> None:
    data, secret = tmp_path / "data", new_secret()
    server = make_server(data, **SLOW)
    save(server, {"remote": remote_settings(moto, bucket, secret)})
    server.stop()
    key_file = data / KEY
    key_file.rename(tmp_path / "kept.key")

    for args in (["settings", "show"], ["serve"]):
        result = run(data, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert str(key_file) in lines[0] and "is missing" in lines[0]
        assert "remote.secret_access_key" in lines[0]
        assert "filestore settings reset" in lines[0]
        assert secret not in result.stderr + result.stdout

    # Another key is no better, and says so.
    key_file.write_bytes(b"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n")
    result = run(data, "settings", "show")
    assert result.returncode == 2 and "holds another key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and secret not in result.stderr

    # The key file put back: all is well again.
    os.replace(tmp_path / "kept.key", key_file)
    result = run(data, "settings", "show")
    assert result.returncode == 0, result.stderr
    assert "remote.secret_access_key = (set)  [saved from the admin page]" in result.stdout

    # Or, the key lost for good: `settings reset` forgets what was saved (no --force needed,
    # where the remotes are is all it looks at), and the config rules again.
    key_file.unlink()
    result = run(data, "settings", "reset")
    assert result.returncode == 0, result.stderr
    result = run(data, "settings", "show")
    assert result.returncode == 0, result.stderr
    assert "remote.secret_access_key = (not set)  [config]" in result.stdout


def test_an_old_plain_text_secret_is_read_then_encrypted_on_the_next_save(
        make_server: Any, moto: Any, bucket: str, tmp_path: Path) -> None:
    data, secret = tmp_path / "data", new_secret()
    make_server(data, **SLOW).stop()  # a registry of this schema
    # What an older filestore saved: the secret as it is.
    with contextlib.closing(sqlite3.connect(data / "registry.sqlite3")) as conn, conn:
        conn.executemany("INSERT INTO settings (section, key, value, updated) VALUES "
                         "('remote', ?, ?, 0)", remote_settings(moto, bucket, secret).items())

    server = make_server(data, upload__delay="0s")
    assert server.store.settings.remote.secret_access_key == secret  # read as it is
    assert not (data / KEY).exists()
    with server.client() as client:
        assert client.put("/files/old.txt", content=b"old secret").status_code == 201
    wait_for(lambda: uploaded(server, "old.txt"))
    assert stored_secret(data) == secret  # nothing was saved yet

    save(server, {"upload": {"delay": "5m"}})  # any save encrypts it
    assert stored_secret(data).startswith("enc:v1:")
    assert (data / KEY).stat().st_mode & 0o777 == 0o600
    assert server.store.settings.remote.secret_access_key == secret
    backup = tmp_path / "after.backup"
    assert cli(data, "backup", str(backup)).exit_code == 0
    assert secret.encode() not in backup.read_bytes()  # nor the old row's leftover bytes
    server.stop()
    again = make_server(data, **SLOW)
    assert again.store.settings.remote.secret_access_key == secret
    assert again.store.settings.upload.delay == 300


def test_restore_without_the_key_file_warns_naming_it(
        make_server: Any, moto: Any, bucket: str, tmp_path: Path) -> None:
    data, secret = tmp_path / "data", new_secret()
    server = make_server(data, **SLOW)
    save(server, {"remote": remote_settings(moto, bucket, secret)})
    backup = tmp_path / "registry.backup"
    assert cli(data, "backup", str(backup)).exit_code == 0
    server.stop()

    elsewhere = tmp_path / "elsewhere"  # a new machine: the backup came, the key file did not
    result = run(elsewhere, "restore", str(backup))
    assert "is the registry of" in result.stdout, result.stderr
    key_file = elsewhere / KEY
    warnings = [line for line in result.stderr.splitlines() if line.startswith("restore: ")]
    assert len(warnings) == 1 and str(key_file) in warnings[0], result.stderr
    assert "is missing" in warnings[0] and secret not in result.stderr
    assert result.returncode == 2  # the verify after it cannot open the store, and says why
    assert "Traceback" not in result.stderr

    shutil.copy2(data / KEY, key_file)  # the key file brought over: restored in full
    result = run(elsewhere, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert "restore: " not in result.stderr
    assert "(set)  [saved from the admin page]" in run(elsewhere, "settings", "show").stdout
