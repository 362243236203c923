"""`filestore accounts ...`: the commands' output and exit codes on a real data directory, the
read-only ones taking no write lock, and changes reaching a running 2-worker server at once."""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import wait_for
from test_accounts import _statuses, bearer, listing, listings_answered
from test_cli_jobs import run

from filestore.cli import main
from filestore.registry import SCHEMA_VERSION

TOKEN = re.compile(r"fsa_[A-Za-z0-9_-]{40,}\n")


def cli(data: Path, *args: str) -> Result:
    env = {"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
           "FILESTORE_CONFIG": ""}
    return CliRunner().invoke(main, ["accounts", *args], env=env)


def test_the_commands_and_their_exit_codes(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = cli(data, "add", "acme", "--name", "Acme Inc", "--quota", "10MiB")
    assert added.exit_code == 0, added.output
    assert TOKEN.fullmatch(added.stdout) and added.stderr == ""  # the token, and nothing else
    token = added.stdout.strip()
    as_json = cli(data, "add", "bob", "--name", "Bob", "--json")
    assert as_json.exit_code == 0, as_json.output
    bob = json.loads(as_json.stdout)
    assert (bob["id"], bob["name"], bob["quota"], bob["state"]) == ("bob", "Bob", 0, "active")
    assert TOKEN.fullmatch(bob["token"] + "\n") and bob["usage"]["files"] == 0

    listed = json.loads(cli(data, "list", "--json").stdout)
    assert [a["id"] for a in listed] == ["acme", "bob"]
    assert listed[0]["quota"] == 10 * 1024**2 and all("token" not in a for a in listed)
    text = cli(data, "list").stdout
    assert "acme" in text and "10.0 MiB" in text and "Acme Inc" in text
    assert token not in text

    laptop = cli(data, "token", "add", "acme", "laptop")
    assert laptop.exit_code == 0 and TOKEN.fullmatch(laptop.stdout)
    minted = json.loads(cli(data, "token", "add", "acme", "ci", "--json").stdout)
    assert minted["name"] == "ci" and TOKEN.fullmatch(minted["token"] + "\n")
    tokens = json.loads(cli(data, "token", "list", "acme", "--json").stdout)
    assert [t["name"] for t in tokens] == ["ci", "default", "laptop"]
    assert all(set(t) == {"name", "created", "last_used"} for t in tokens)
    assert "laptop" in cli(data, "token", "list", "acme").stdout
    revoked = cli(data, "token", "revoke", "acme", "ci")
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout

    # A server on the data directory takes the tokens; its files show in `show`.
    server = make_server(data)
    with httpx.Client(base_url=server.url, timeout=30, headers=bearer(token)) as acme:
        assert acme.put("/files/acme/a.bin", content=b"a" * 3000).status_code == 201
        assert acme.put("/files/acme/b/c.bin", content=b"c" * 500).status_code == 201
        assert acme.put("/files/acme/big.bin", content=b"x" * (11 * 1024**2)).status_code == 507
    with httpx.Client(base_url=server.url, timeout=30,
                      headers=bearer(minted["token"])) as revoked_client:
        assert revoked_client.get("/files/").status_code == 401
    with server.client() as owner:
        items = listing(owner, prefix="acme/")
    server.stop()
    shown = json.loads(cli(data, "show", "acme", "--json").stdout)
    assert shown["usage"]["files"] == len(items) == 2
    assert shown["usage"]["bytes"] == sum(i["size"] for i in items) == 3500
    assert shown["usage"]["local_bytes"] == 3500
    assert [t["name"] for t in shown["tokens"]] == ["default", "laptop"]
    assert token not in json.dumps(shown)
    text = cli(data, "show", "acme").stdout
    assert "2 files, 3.4 KiB" in text and "token    laptop" in text

    suspended = json.loads(cli(data, "suspend", "acme", "--json").stdout)
    assert suspended["state"] == "suspended"
    assert cli(data, "resume", "acme").stdout.strip() == "accounts: acme active"

    # 1: not found or a conflict, one line on stderr.
    for args in (["show", "nobody"], ["suspend", "nobody"], ["resume", "nobody"],
                 ["remove", "nobody"], ["token", "list", "nobody"],
                 ["token", "add", "nobody", "x"], ["token", "revoke", "acme", "gone"],
                 ["add", "acme", "--name", "Again"], ["token", "add", "acme", "laptop"],
                 ["remove", "acme"]):
        done = cli(data, *args)
        assert done.exit_code == 1, (args, done.output)
        assert done.stdout == "" and done.stderr.startswith("filestore: error: "), args
        assert len(done.stderr.strip().splitlines()) == 1, args
    assert "holds 2 files" in cli(data, "remove", "acme").stderr
    # 2: usage.
    for args in (["add", "Acme", "--name", "x"], ["add", "a/b", "--name", "x"],
                 ["add", "ok"], ["add", "ok", "--name", ""], ["add", "ok", "--name", "x",
                                                               "--quota", "lots"],
                 ["add", "ok", "--name", "x", "--quota", "-1"], ["show"], ["show", "UP"],
                 ["token", "add", "acme", "a b"], ["token", "revoke", "acme"], ["frobnicate"]):
        done = cli(data, *args)
        assert done.exit_code == 2, (args, done.output)
        assert done.stdout == "", args
    assert cli(data, "show", "ok").exit_code == 1  # none of those made it

    assert cli(data, "remove", "bob", "--json").stdout.strip() == '{\n  "removed": "bob"\n}'
    assert [a["id"] for a in json.loads(cli(data, "list", "--json").stdout)] == ["acme"]


READ_ONLY = [["list", "--json"], ["show", "acme", "--json"], ["token", "list", "acme", "--json"]]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda args: " ".join(args[:2]))
def test_read_only_commands_take_no_write_lock_and_recover_nothing(
        tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    assert cli(data, "add", "acme", "--name", "Acme").exit_code == 0
    registry = data / "registry.sqlite3"
    with sqlite3.connect(registry) as conn:
        conn.execute("INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
                     "VALUES ('put', 'acme/x', '/nonexistent', 1, '', 't', 0)")
    lock = os.open(data / "start.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a server starting: a writer would wait for it
        done = cli(data, *args)
    finally:
        os.close(lock)
    assert done.exit_code == 0, done.output
    assert "acme" in done.stdout or "default" in done.stdout
    with sqlite3.connect(registry) as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 1  # not recovered
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_changes_reach_a_running_two_worker_server_at_once(serve_process: Any,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve_process(data, server__workers="2").start()
    added = run(["accounts", "add", "acme", "--name", "Acme", "--quota", "1KiB"], data)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert _statuses(server.url, token, 24) == {200}  # a new account's token works at once
    with httpx.Client(base_url=server.url, timeout=30, headers=bearer(token)) as acme:
        assert acme.put("/files/acme/a.bin", content=b"a" * 1000).status_code == 201
        assert acme.put("/files/acme/b.bin", content=b"b" * 100).status_code == 507
    shown = json.loads(run(["accounts", "show", "acme", "--json"], data).stdout)  # alongside
    assert (shown["usage"]["files"], shown["usage"]["bytes"]) == (1, 1000)

    assert run(["accounts", "suspend", "acme"], data).returncode == 0
    wait_for(lambda: _statuses(server.url, token) == {403}, timeout=1.0)
    assert _statuses(server.url, token, 24) == {403}
    assert run(["accounts", "resume", "acme"], data).returncode == 0
    wait_for(lambda: _statuses(server.url, token) == {200}, timeout=1.0)

    second = run(["accounts", "token", "add", "acme", "second"], data).stdout.strip()
    assert _statuses(server.url, second, 24) == {200}
    assert run(["accounts", "token", "revoke", "acme", "second"], data).returncode == 0
    wait_for(lambda: _statuses(server.url, second) == {401}, timeout=1.0)
    assert _statuses(server.url, second, 24) == {401}
    assert _statuses(server.url, token, 24) == {200}
    for status in (401, 403):  # both worker processes refused
        wait_for(lambda s=status: len(listings_answered(data, s)) == 2, timeout=5)
    code, output = server.stop()
    assert code == 0 and token not in output and second not in output
