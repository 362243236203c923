"""Single-use signed URLs (`filestore sign --once`): spent by their first 2xx answer, refused
(403) after, in every worker process; failed uses give them back; spent nonces are pruned."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import LiveServer, ServeProcess, registry_db, wait_for

from filestore import signing
from filestore.registry import SqliteRegistry


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _nonce(url: str) -> str:
    return parse_qs(urlsplit(url).query)["once"][0]


def _state(server: Any, nonce: str) -> str | None:
    with contextlib.closing(registry_db(server)) as conn:
        row = conn.execute("SELECT spent FROM grants WHERE nonce = ?", (nonce,)).fetchone()
    return None if row is None else ("spent" if row["spent"] is not None else "claimed")


def _refused(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 403, (reply.status_code, reply.text)
    assert reply.json()["error"] == "bad_signature" and reason in reply.json()["detail"]


def test_a_once_put_is_spent_by_its_first_success_only(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    body = b"upload me once"
    with server.client() as owner:
        signed = owner.post("/admin/api/sign", json={
            "path": "in/once.bin", "method": "PUT", "once": True,
            "sha256": hashlib.sha256(body).hexdigest()}).json()
    assert signed["once"] is True
    url, nonce = _target(signed["url"]), _nonce(signed["url"])
    with server.client(auth=False) as anon:
        # Failures do not spend it: a wrong body (400), a precondition that fails (412).
        assert anon.put(url, content=b"not it").status_code == 400
        assert _state(server, nonce) is None
        with server.client() as owner:
            assert owner.put("/files/in/once.bin", content=b"old").status_code == 201
        assert anon.put(url, content=body, headers={"if-none-match": "*"}).status_code == 412
        assert _state(server, nonce) is None
        reply = anon.put(url, content=body)
        assert reply.status_code == 200, reply.text
        assert _state(server, nonce) == "spent"
        _refused(anon.put(url, content=body), "single-use URL was already used")
    with server.client() as owner:
        assert owner.get("/files/in/once.bin").content == body


def test_a_once_get_serves_one_2xx_answer(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    key = signing.SigningKey(server.settings.data_dir)
    url = _target(key.sign("GET", "later.txt", int(time.time()) + 600, once=True))
    delete = _target(key.sign("DELETE", "later.txt", int(time.time()) + 600, once=True))
    with server.client(auth=False) as anon:
        assert anon.get(url).status_code == 404  # not there yet: not a use
        assert anon.delete(delete).status_code == 404
        with server.client() as owner:
            reply = owner.put("/files/later.txt", content=b"now it is")
            etag = reply.headers["etag"]
        assert anon.get(url, headers={"if-none-match": etag}).status_code == 304  # not a use
        assert anon.get(url, headers={"range": "bytes=99-"}).status_code == 416  # nor this
        reply = anon.get(url, headers={"range": "bytes=0-2"})
        assert reply.status_code == 206 and reply.content == b"now"  # this is
        _refused(anon.get(url), "already used")
        assert anon.head(url).status_code == 403  # a GET URL's HEAD: the same URL, spent
        assert anon.delete(delete).status_code == 204
        _refused(anon.delete(delete), "already used")
    # Plain URLs are not single-use.
    plain = _target(key.sign("GET", "gone.txt", int(time.time()) + 600))
    with server.client(auth=False) as anon:
        assert anon.get(plain).status_code == 404 and anon.get(plain).status_code == 404


def test_the_once_flag_and_its_nonce_are_under_the_signature(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        owner.put("/files/pub.txt", content=b"pub")
    key = signing.SigningKey(server.settings.data_dir)
    url = _target(key.sign("GET", "pub.txt", int(time.time()) + 600, once=True))
    nonce = _nonce(url)
    with server.client(auth=False) as anon:
        _refused(anon.get(url.replace(f"&once={nonce}", "")), "does not match")
        _refused(anon.get(url.replace(nonce, "0" * 32)), "does not match")
        _refused(anon.get(url.replace(nonce, "zz")), "once must be")
        assert anon.get(url).status_code == 200
        _refused(anon.get(url), "already used")


def test_sign_once_on_the_command_line(make_server: Any) -> None:
    from click.testing import CliRunner

    from filestore.cli import main

    server: LiveServer = make_server()
    with server.client() as owner:
        owner.put("/files/cli.txt", content=b"cli")
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir),
           "FILESTORE_SERVER__PORT": str(server.port), "FILESTORE_CONFIG": ""}
    done = CliRunner().invoke(main, ["sign", "cli.txt", "--once"], env=env)
    assert done.exit_code == 0, done.output
    url = done.stdout.strip()
    assert "&once=" in url
    assert httpx.get(url, timeout=10).content == b"cli"
    _refused(httpx.get(url, timeout=10), "already used")


@pytest.mark.slow  # two worker processes take ~5-10 s to start on this 2-core machine
def test_a_once_url_is_used_once_across_worker_processes(tmp_path: Path) -> None:
    proc = ServeProcess(tmp_path / "data", server__workers="2")
    proc.start()
    try:
        with proc.client() as owner:
            assert owner.put("/files/shared.bin", content=b"x" * 100_000).status_code == 201
        key = signing.SigningKey(proc.data_dir)
        metrics_dir = proc.data_dir / "metrics"
        # A new connection each (no keep-alive): the kernel spreads them over the workers.
        with httpx.Client(base_url=proc.url, timeout=30,
                          limits=httpx.Limits(max_keepalive_connections=0)) as fresh:

            def both_workers_answered() -> bool:
                for _ in range(10):
                    assert fresh.get("/healthz").status_code == 200
                writers = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
                return len(writers) >= 2

            wait_for(both_workers_answered, timeout=30, interval=0.1)
            for round_ in range(3):
                url = _target(key.sign("GET", "shared.bin", int(time.time()) + 600, once=True))

                def use(_: int, url: str = url) -> int:
                    return fresh.get(url).status_code

                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    statuses = sorted(pool.map(use, range(8)))
                assert statuses == [200] + [403] * 7, (round_, statuses)
                later = [fresh.get(url).status_code for _ in range(10)]
                assert later == [403] * 10, later
    finally:
        _, out = proc.stop()
    assert "Traceback" not in out, out


def test_spent_nonces_are_pruned_after_their_expiry(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from filestore.cli import main

    data = tmp_path / "data"
    done = CliRunner().invoke(main, ["token"], env={"FILESTORE_STORAGE__DATA_DIR": str(data),
                                                    "FILESTORE_CONFIG": ""})
    assert done.exit_code == 0, done.output
    registry = SqliteRegistry(data / "registry.sqlite3")
    try:
        now = time.time()
        with registry.transaction() as tx:
            assert tx.grants.claim("a" * 32, now - 7200, now - 8000) is None
            tx.grants.spend("a" * 32, now - 7999)
            assert tx.grants.claim("b" * 32, now + 600, now) is None
            tx.grants.spend("b" * 32, now)
            assert tx.grants.claim("b" * 32, now + 600, now) == "spent"
            assert tx.grants.claim("c" * 32, now + 600, now) is None
            assert tx.grants.claim("c" * 32, now + 600, now) == "claimed"
            tx.grants.release("c" * 32)
        # The claim above pruned "a" (expired over an hour ago), not the others.
        assert registry.read.grants.state("a" * 32) is None
        assert registry.read.grants.state("b" * 32) == "spent"
        assert registry.read.grants.state("c" * 32) is None
    finally:
        registry.close()
