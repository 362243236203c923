"""The `filestore` log as an operator reads it: the stderr of `python -m filestore serve`.

One server on S3 (moto, behind the fault proxy of tests/faults.py) with `log.format = "json"`
goes through a workload that makes every event happen (crash recovery at start, uploads, an
upload that fails until it gives up, a remote delete that fails once, evictions, a corrupt
download, a move job, a settings save with a secret, an account's tokens, a token rotation, a
repair); every line it wrote must be one JSON object, each event must be there with its path and
figures, and no secret may appear anywhere. Then the text format, and `log.level = "warning"`
hiding the info events.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_for
from faults import FaultProxy

from filestore import logs
from filestore.config import load_settings

FILESTORE = [sys.executable, "-m", "filestore"]
FIXED = {"time", "level", "logger", "event", "message"}
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [a-z_.]+: ")


def _env(data: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FILESTORE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
                "FILESTORE_CACHE__MIN_FREE": "0", "FILESTORE_UPLOAD__DELAY": "0s"})
    env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FILESTORE, *args], env=env, capture_output=True, text=True,
                          timeout=60)


class Serve:
    """`python -m filestore serve`, its stdout and stderr read apart as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "FILESTORE_SERVER__PORT": str(self.port)}
        self.data = Path(env["FILESTORE_STORAGE__DATA_DIR"])
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen([*FILESTORE, "serve"], env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._readers = [threading.Thread(target=lines.extend, args=(stream,), daemon=True)
                         for lines, stream in ((self.stdout, self.proc.stdout),
                                               (self.stderr, self.proc.stderr))]
        for reader in self._readers:
            reader.start()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {''.join(self.stderr)}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30, interval=0.05)

    @property
    def token(self) -> str:
        return (self.data / "token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"authorization": f"Bearer {self.token}"})

    def events(self) -> list[dict[str, Any]]:
        """Every stderr line so far, each one JSON object (the last may still be arriving)."""
        return [json.loads(line) for line in list(self.stderr) if line.endswith("\n")]

    def wait_event(self, event: str, /, **figures: Any) -> dict[str, Any]:
        """The first line of `event` with these figures, once it is there."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events() if e["event"] == event
                         and all(e.get(k) == v for k, v in figures.items())), None)

        return wait_for(found, timeout=20)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Serve] = []

    def start(env: dict[str, str]) -> Serve:
        started.append(Serve(env))
        return started[-1]

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def proxy(moto: Any) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(moto.port, http=True)
    yield fault_proxy
    fault_proxy.close()


def _crashed(env: dict[str, str]) -> Path:
    """A data directory a process left in the middle of things: a PUT renamed into place but
    not recorded, a DELETE whose bytes are still there, a stray body in tmp/."""
    data = Path(env["FILESTORE_STORAGE__DATA_DIR"])
    made = _cli(env, "token")  # creates the registry
    assert made.returncode == 0, made.stderr
    body = b"recovered!"
    (data / "files" / "crash").mkdir(parents=True)
    (data / "files" / "crash" / "recorded.txt").write_bytes(body)
    (data / "files" / "crash" / "deleted.txt").write_bytes(b"gone")
    (data / "tmp" / "put-stray").write_bytes(b"half a body")
    with contextlib.closing(sqlite3.connect(data / "registry.sqlite3")) as conn, conn:
        conn.execute("INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
                     "VALUES ('put', 'crash/recorded.txt', ?, ?, ?, 'text/plain', 0)",
                     (str(data / "tmp" / "put-gone"), len(body),
                      hashlib.sha256(body).hexdigest()))
        conn.execute("INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
                     "VALUES ('delete', 'crash/deleted.txt', '', 0, '', '', 0)")
    return data


def _location(data: Path, path: str) -> str | None:
    with contextlib.closing(sqlite3.connect(data / "registry.sqlite3", timeout=10)) as conn:
        row = conn.execute("SELECT location FROM files WHERE path = ?", (path,)).fetchone()
    return None if row is None else str(row[0])


def test_a_json_log_of_a_real_server_has_every_event_and_no_secret(
        serve: Any, proxy: FaultProxy, moto: Any, bucket: str, tmp_path: Path) -> None:
    s3_secret = f"s3-secret-{uuid.uuid4().hex}"
    saved_secret = f"saved-secret-{uuid.uuid4().hex}"
    env = _env(tmp_path / "data", log__format="json", remote__url=f"s3://{bucket}/fs",
               remote__endpoint_url=proxy.url, remote__region="us-east-1",
               remote__access_key_id="filestore-test-key", remote__secret_access_key=s3_secret,
               upload__max_attempts="2", upload__retry_base="50ms", upload__retry_max="100ms",
               cache__max_size="1000")
    data = _crashed(env)
    server = serve(env)
    secrets = [s3_secret, saved_secret, server.token]

    # Crash recovery, before the server took its first request.
    server.wait_event("recovery.recorded", path="crash/recorded.txt", size=10, level="warning")
    server.wait_event("recovery.delete_finished", path="crash/deleted.txt")
    server.wait_event("recovery.temp_removed", file="put-stray")
    assert not (data / "files" / "crash" / "deleted.txt").exists()

    bodies = {name: os.urandom(400) for name in ("a.txt", "b.txt", "c.txt")}
    with server.client() as client:
        for name, body in bodies.items():
            assert client.put(f"/files/{name}", content=body).status_code == 201
        for name, size in [*((n, 400) for n in bodies), ("crash/recorded.txt", 10)]:
            done = server.wait_event("upload.done", path=name)
            assert (done["level"], done["size"], done["remote"]) == ("info", size, "default")
            assert done["seconds"] >= 0 and done["logger"] == "filestore.queue"
        # 1,210 bytes uploaded into a 1,000-byte cache: a batch goes, in one line.
        evicted = server.wait_event("cache.evicted", reason="budget")
        assert evicted["count"] >= 1 and evicted["bytes"] >= 210 and "path" not in evicted

        # An upload the store refuses with 503 each time: retried, then given up.
        refusal = proxy.answer(503, "SlowDown", method="PUT", path="fs/fail.txt", times=None)
        assert client.put("/files/fail.txt", content=b"never up").status_code == 201
        gave_up = server.wait_event("upload.gave_up", path="fail.txt")
        failed = server.wait_event("upload.failed", path="fail.txt")
        proxy.clear()
        assert refusal.hits == 2
        assert (failed["level"], failed["attempt"], failed["remote"]) == ("warning", 1, "default")
        assert 0 <= failed["retry_in"] <= 0.1 and "SlowDown" in failed["error"]
        assert (gave_up["level"], gave_up["attempts"], gave_up["max_attempts"]) == ("error", 2, 2)
        assert "SlowDown" in gave_up["error"]

        # Evicted as asked (what the budget left of a.txt and c.txt), then a corrupt download.
        asked = [name for name in ("a.txt", "c.txt")
                 if client.post(f"/admin/api/files/{name}/evict").json()["changed"]]
        assert asked
        for name in asked:
            one = server.wait_event("cache.evicted", path=name, reason="asked")
            assert (one["count"], one["bytes"]) == (1, 400)
        corrupt = proxy.corrupt(0, method="GET", path="fs/a.txt", times=1)
        with contextlib.suppress(httpx.HTTPError), client.stream("GET", "/files/a.txt") as r:
            for _ in r.iter_raw():
                pass
        assert corrupt.hits == 1
        bad = server.wait_event("cache.integrity_failure", path="a.txt")
        assert (bad["level"], bad["size"], bad["received"]) == ("error", 400, 400)

        # A remote delete that fails once, then goes.
        proxy.answer(503, "SlowDown", method="DELETE", path="fs/b.txt", times=1)
        assert client.delete("/files/b.txt").status_code == 204
        deleted = server.wait_event("remote_delete.done", path="b.txt")
        assert (deleted["level"], deleted["remote"]) == ("info", "default")
        assert server.wait_event("remote_delete.failed", path="b.txt")["level"] == "warning"

        # Everything in the cloud back to local: a.txt, c.txt and crash/recorded.txt.
        r = client.post("/admin/api/jobs", json={"kind": "move-to-local"})
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        started = server.wait_event("move.started", job=job)
        finished = server.wait_event("move.finished", job=job)
        assert started["kind"] == finished["kind"] == "move-to-local"
        assert (finished["state"], finished["files"], finished["bytes"], finished["errors"]) \
            == ("done", 3, 810, 0)

        # A settings save with a secret: the keys are named, never the value.
        r = client.put("/admin/api/settings", json={"remote": {"secret_access_key": saved_secret},
                                                    "upload": {"delay": "1s"}})
        assert r.status_code == 200, r.text
        saved = server.wait_event("settings.saved")
        assert saved["keys"] == ["remote.secret_access_key", "upload.delay"]
        assert saved["remotes"] == ["default"] and saved["tested_on"]
        assert server.wait_event("settings.remote_changed", remote="default")["level"] \
            == "warning"

        # An account, a token made and revoked.
        r = client.post("/admin/api/accounts", json={"id": "acme", "name": "Acme"})
        assert r.status_code == 201, r.text
        secrets.append(r.json()["token"])
        r = client.post("/admin/api/accounts/acme/tokens", json={"name": "laptop"})
        assert r.status_code == 201, r.text
        secrets.append(r.json()["token"])
        assert client.delete("/admin/api/accounts/acme/tokens/laptop").status_code == 204
    server.wait_event("account.created", account="acme")
    server.wait_event("token.created", account="acme", name="default")
    server.wait_event("token.created", account="acme", name="laptop")
    server.wait_event("token.revoked", account="acme", name="laptop")

    # The API token rotated from the command line: the command says so, the server takes it up.
    rotated = _cli(env, "token", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    secrets.append(rotated.stdout.strip())
    notes = [json.loads(line) for line in rotated.stderr.splitlines() if line.startswith("{")]
    assert [n["event"] for n in notes] == ["admin_token.rotated"]
    assert notes[0]["level"] == "warning" and notes[0]["file"] == str(data / "token")
    server.wait_event("admin_token.reloaded")
    server.stop()

    # A repair by `filestore verify --repair`: bytes no row describes, adopted.
    (data / "files" / "orphan.txt").write_bytes(b"no row")
    verified = _cli(env, "verify", "--repair", "--json")
    assert verified.returncode == 1, verified.stderr  # something was wrong (and repaired)
    repairs = [json.loads(line) for line in verified.stderr.splitlines()]
    assert [(r["event"], r["path"], r["kind"]) for r in repairs] == [
        ("verify.repaired", "orphan.txt", "orphan")]
    assert repairs[0]["level"] == "warning" and "adopted" in repairs[0]["repair"]

    lines = list(server.stderr)
    events = [json.loads(line) for line in lines]  # every line: one JSON object
    assert all(event.keys() >= FIXED for event in events)
    assert all(event["level"] in ("info", "warning", "error") for event in events)
    assert {e["event"] for e in events if e["event"].startswith(("upload.", "cache."))} >= {
        "upload.done", "upload.failed", "upload.gave_up", "cache.evicted",
        "cache.integrity_failure"}
    # Each failed attempt once: one warning for the retry, one error for the last.
    assert [e["event"] for e in events if e.get("path") == "fail.txt"] == [
        "upload.failed", "upload.gave_up"]
    everything = "".join(lines + server.stdout) + rotated.stderr + verified.stderr \
        + verified.stdout
    for secret in secrets:
        assert secret not in everything


def test_the_text_format_is_one_line_as_people_read_it(serve: Any, tmp_path: Path) -> None:
    env = _env(tmp_path / "data")  # the embedded file remote, `log.format` left as "text"
    (tmp_path / "data" / "tmp").mkdir(parents=True)
    (tmp_path / "data" / "tmp" / "put-stray").write_bytes(b"half a body")
    server = serve(env)
    with server.client() as client:
        assert client.put("/files/notes.txt", content=b"hello").status_code == 201
    line = wait_for(lambda: next((x for x in server.stderr if " upload.done: " in x), None))
    assert TEXT_LINE.match(line) and re.search(
        r" INFO upload\.done: uploaded 'notes\.txt' \(5 bytes\) to default in \d+\.\d\d s\n$",
        line), line
    server.stop()
    assert any(re.search(r" INFO recovery\.temp_removed: recovery: removed an unfinished upload "
                         r"body put-stray\n$", x) for x in server.stderr), server.stderr
    assert all(TEXT_LINE.match(x) for x in server.stderr), server.stderr


def test_level_warning_hides_the_info_events(serve: Any, tmp_path: Path) -> None:
    env = _env(tmp_path / "data", log__format="json", log__level="warning")
    data = _crashed(env)  # recovery records a file (a warning) and removes a body (info)
    server = serve(env)
    with server.client() as client:
        assert client.put("/files/notes.txt", content=b"hello").status_code == 201
    # Both uploaded: two upload.done, at info, were logged or not by now.
    wait_for(lambda: _location(data, "notes.txt") == _location(data, "crash/recorded.txt")
             == "remote")
    server.stop()
    events = server.events()
    assert [(e["event"], e["level"], e["path"]) for e in events] == [
        ("recovery.recorded", "warning", "crash/recorded.txt")]


def test_setup_is_idempotent_and_secret_named_figures_are_redacted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process, on the real logger (put back as it was afterwards)."""
    logger = logging.getLogger(logs.LOGGER)
    before = (list(logger.handlers), logger.level, logger.propagate)
    settings = load_settings(environ={"FILESTORE_STORAGE__DATA_DIR": str(tmp_path),
                                      "FILESTORE_LOG__FORMAT": "json"})
    try:
        logs.configure(settings)
        logs.configure(settings)
        assert sum(isinstance(h, logs.StderrHandler) for h in logger.handlers) == 1
        capsys.readouterr()
        logs.event(logging.getLogger("filestore.test"), "test.event", "{path} with {token}",
                   path="p.txt", token="tok-123", secret_access_key="sk-456", size=3)
        line = json.loads(capsys.readouterr().err)
        assert (line["event"], line["path"], line["size"]) == ("test.event", "p.txt", 3)
        assert line["token"] == line["secret_access_key"] == logs.REDACTED
        assert line["message"] == f"p.txt with {logs.REDACTED}"
        logs.configure(settings, floor=logging.WARNING)
        logs.event(logger, "test.hidden", "an info event under a warning floor")
        assert capsys.readouterr().err == ""
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])
        logger.propagate = before[2]
