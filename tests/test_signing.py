"""Signed URLs (`?expires=&sig=`): what they grant, and every way they are refused (403, a reason,
never a 500); minted by `filestore sign` and `POST /admin/api/sign`, also through nginx."""

from __future__ import annotations

import itertools
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import LiveServer, wait_for
from test_accel import PREFIX, Nginx, needs_nginx

from filestore import signing
from filestore.cli import main


def _key(server: LiveServer) -> signing.SigningKey:
    return signing.SigningKey(server.settings.data_dir)


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _refused(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 403, (reply.status_code, reply.text)
    assert reply.json()["error"] == "bad_signature"
    assert reason in reply.json()["detail"], reply.json()["detail"]


@pytest.fixture
def private(make_server: Any) -> LiveServer:
    server: LiveServer = make_server(auth__public_read="false")
    with server.client() as owner:
        assert owner.put("/files/docs/report.pdf", content=b"quarterly").status_code == 201
        assert owner.put("/files/docs/other.pdf", content=b"other").status_code == 201
    return server


def test_signed_get_reads_a_private_file_and_only_that(private: LiveServer) -> None:
    key = _key(private)
    expires = int(time.time()) + 600
    url = _target(key.sign("GET", "docs/report.pdf", expires))
    with private.client(auth=False) as anon:
        assert anon.get("/files/docs/report.pdf").status_code == 401  # private without it
        reply = anon.get(url)
        assert reply.status_code == 200 and reply.content == b"quarterly"
        assert anon.head(url).status_code == 200  # a GET URL also allows HEAD
        assert anon.get(url, headers={"range": "bytes=0-3"}).content == b"quar"
        # Other path, other method, altered expiry or signature: refused with a reason.
        _refused(anon.get(url.replace("report", "other")), "does not match this path")
        _refused(anon.put(url, content=b"x"), "signed for GET, not PUT")
        _refused(anon.delete(url), "signed for GET, not DELETE")
        _refused(anon.get(url.replace(f"expires={expires}", f"expires={expires + 1}")),
                 "does not match")
        sig = url.rsplit("sig=", 1)[1]
        flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        _refused(anon.get(url.replace(sig, flipped)), "does not match")
        assert anon.get(url.replace(sig, sig.upper())).status_code == 200  # hex is hex
    with private.client() as owner:  # the file is unchanged by the refused writes
        assert owner.get("/files/docs/report.pdf").content == b"quarterly"


def test_signed_put_and_delete_grant_exactly_their_method(private: LiveServer) -> None:
    key = _key(private)
    expires = int(time.time()) + 600
    put = _target(key.sign("PUT", "inbox/scan.tif", expires))
    delete = _target(key.sign("DELETE", "docs/other.pdf", expires))
    with private.client(auth=False) as anon:
        reply = anon.put(put, content=b"scanned")
        assert reply.status_code == 201, reply.text
        _refused(anon.get(put), "signed for PUT, not GET")
        assert anon.delete(delete).status_code == 204
        _refused(anon.delete(put), "signed for PUT, not DELETE")
    with private.client() as owner:
        assert owner.get("/files/inbox/scan.tif").content == b"scanned"
        assert owner.get("/files/docs/other.pdf").status_code == 404


def test_expired_url_is_refused_and_says_when(private: LiveServer) -> None:
    expires = int(time.time()) - 1
    url = _target(_key(private).sign("GET", "docs/report.pdf", expires))
    with private.client(auth=False) as anon:
        _refused(anon.get(url), "expired at")


def test_a_bad_signature_is_refused_even_where_reads_are_public(make_server: Any) -> None:
    server = make_server()
    with server.client() as owner:
        owner.put("/files/open.txt", content=b"public")
    with server.client(auth=False) as anon:
        assert anon.get("/files/open.txt?v=3").content == b"public"  # other queries: ignored
        _refused(anon.get(f"/files/open.txt?expires=1&sig={'0' * 64}"), "does not match")


MALFORMED = [
    ("sig=" + "a" * 64, "expires is missing"),
    ("expires=9999999999", "sig is missing"),
    ("expires=abc&sig=" + "a" * 64, "Unix time"),
    ("expires=-5&sig=" + "a" * 64, "Unix time"),
    ("expires=1e9&sig=" + "a" * 64, "Unix time"),
    ("expires=%C2%B2&sig=" + "a" * 64, "Unix time"),  # "²" is a digit to str.isdigit
    ("expires=" + "9" * 400 + "&sig=" + "a" * 64, "Unix time"),
    ("expires=9999999999&sig=zz", "hexadecimal"),
    ("expires=9999999999&sig=" + "g" * 64, "hexadecimal"),
    ("expires=9999999999&sig=q83vEjRWeJA%3D", "hexadecimal"),  # base64 is not it either
    ("expires=9999999999&sig=%FF%FE" + "a" * 62, "hexadecimal"),
    ("expires=9999999999&sig=", "hexadecimal"),
    ("expires=1&expires=2&sig=" + "a" * 64, "more than once"),
    ("expires=9999999999&sig=" + "a" * 64 + "&sig=" + "b" * 64, "more than once"),
    ("%73ig=" + "a" * 64, "expires is missing"),  # an encoded name is still the name
    ("&".join(["x=1"] * 40) + "&sig=a", "too many fields"),
]


def test_malformed_signatures_are_403_with_a_reason(private: LiveServer) -> None:
    with private.client(auth=False) as anon:
        for (query, reason), method in itertools.product(MALFORMED,
                                                         ("GET", "HEAD", "PUT", "DELETE")):
            reply = anon.request(method, f"/files/docs/report.pdf?{query}", content=b"x"
                                 if method == "PUT" else None)
            assert reply.status_code == 403, (query, method, reply.status_code, reply.text)
            if method != "HEAD":
                _refused(reply, reason)


def test_rotating_the_key_revokes_urls_in_running_servers(private: LiveServer) -> None:
    expires = int(time.time()) + 600
    old = _target(_key(private).sign("GET", "docs/report.pdf", expires))
    key_file = private.settings.data_dir / signing.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with private.client(auth=False) as anon:
        assert anon.get(old).status_code == 200
        done = _cli(private, "sign", "--rotate-key")
        assert done.exit_code == 0, done.output
        wait_for(lambda: anon.get(old).status_code == 403, timeout=5)  # within a second
        _refused(anon.get(old), "key since rotated")
        fresh = _target(_key(private).sign("GET", "docs/report.pdf", expires))
        assert anon.get(fresh).status_code == 200


def _cli(server: LiveServer, *args: str) -> Result:
    """The command in this process (a subprocess costs ~2 s of imports here)."""
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir),
           "FILESTORE_SERVER__PORT": str(server.port), "FILESTORE_CONFIG": ""}
    return CliRunner().invoke(main, list(args), env=env)


def test_sign_command_prints_a_working_url(private: LiveServer) -> None:
    done = _cli(private, "sign", "docs/report.pdf", "--expires", "5m")
    assert done.exit_code == 0, done.output
    url = done.output.strip()
    assert url.startswith(f"http://127.0.0.1:{private.port}/files/docs/report.pdf?expires=")
    expires = int(url.split("expires=")[1].split("&")[0])
    assert 290 <= expires - time.time() <= 301
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200 and reply.content == b"quarterly"
    for bad in (["../x"], ["a", "--expires", "soon"], ["a", "--expires", "0s"], []):
        done = _cli(private, "sign", *bad)
        assert done.exit_code in (1, 2), (bad, done.output)
        assert done.exception is None or isinstance(done.exception, SystemExit), bad
        assert "error" in done.output.lower(), (bad, done.output)


def test_admin_api_signs_with_the_token(private: LiveServer) -> None:
    with private.client() as owner, private.client(auth=False) as anon:
        assert anon.post("/admin/api/sign", json={"path": "docs/report.pdf"}).status_code == 401
        reply = owner.post("/admin/api/sign", json={"path": "docs/report.pdf", "expires": "10m"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["url"].startswith(private.url + "/files/docs/report.pdf?")
        assert 590 <= body["expires"] - time.time() <= 601
        assert anon.get(_target(body["url"])).content == b"quarterly"
        put = owner.post("/admin/api/sign", json={"path": "up/new.txt", "method": "PUT"}).json()
        assert anon.put(_target(put["url"]), content=b"new").status_code == 201
        for bad in ({"path": "../etc"}, {"path": "a", "method": "POST"}, {"path": "a",
                    "expires": "forever"}, {"path": "a", "expires": 0}, {"path": 3}, []):
            reply = owner.post("/admin/api/sign", json=bad)
            assert reply.status_code == 400, (bad, reply.text)


@needs_nginx
def test_signed_get_is_checked_by_filestore_and_sent_by_nginx(make_server: Any,
                                                              tmp_path: Path) -> None:
    server = make_server(auth__public_read="false", server__accel_redirect=PREFIX)
    nginx = Nginx(tmp_path / "nginx", server.port, server.settings.data_dir)
    try:
        with nginx.client(server.token) as owner, nginx.client() as anon:
            assert owner.put("/files/v/clip.bin", content=b"video bytes").status_code == 201
            url = _target(_key(server).sign("GET", "v/clip.bin", int(time.time()) + 60))
            reply = anon.get(url)
            assert reply.status_code == 200 and reply.content == b"video bytes"
            assert nginx.served(url) == "nginx"  # filestore checked it, nginx sent the bytes
            _refused(anon.get(url.replace("clip", "clop")), "does not match")
            assert anon.get("/files/v/clip.bin").status_code == 401
    finally:
        nginx.stop()


# -- limits: signing.max_expiry, a PUT's body and type bound, the key with the token -----------

def _sha256(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


def test_sign_refuses_a_lifetime_over_max_expiry(private: LiveServer) -> None:
    done = _cli(private, "sign", "docs/report.pdf", "--expires", "8d")
    assert done.exit_code == 2, done.output
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "signing.max_expiry (7d)" in lines[0], done.stderr
    assert _cli(private, "sign", "docs/report.pdf", "--expires", "7d").exit_code == 0
    env = {"FILESTORE_SIGNING__MAX_EXPIRY": "30d"}
    longer = CliRunner().invoke(main, ["sign", "docs/report.pdf", "--expires", "8d"], env={
        "FILESTORE_STORAGE__DATA_DIR": str(private.settings.data_dir), "FILESTORE_CONFIG": "",
        **env})
    assert longer.exit_code == 0, longer.output
    with private.client() as owner:
        reply = owner.post("/admin/api/sign", json={"path": "docs/report.pdf", "expires": "8d"})
        assert reply.status_code == 400 and "signing.max_expiry (7d)" in reply.json()["detail"]
        reply = owner.post("/admin/api/sign", json={"path": "docs/report.pdf",
                                                    "expires": 7 * 86400 + 1})
        assert reply.status_code == 400, reply.text
        assert owner.post("/admin/api/sign", json={"path": "docs/report.pdf",
                                                   "expires": "7d"}).status_code == 200


def test_a_url_further_off_than_max_expiry_is_refused_when_used(make_server: Any) -> None:
    server = make_server(auth__public_read="false", signing__max_expiry="1h")
    with server.client() as owner:
        assert owner.put("/files/a.txt", content=b"a").status_code == 201
    key, now = _key(server), int(time.time())
    with server.client(auth=False) as anon:
        assert anon.get(_target(key.sign("GET", "a.txt", now + 1800))).content == b"a"
        _refused(anon.get(_target(key.sign("GET", "a.txt", now + 7200))),
                 "further off than signing.max_expiry (1h)")
        # Hand-made for years, as the parser takes them: refused under the default 7d as well.
        default = make_server(server.settings.data_dir.parent / "other")
        far = _target(_key(default).sign("GET", "a.txt", now + 3 * 365 * 86400))
        reply = httpx.get(default.url + far, timeout=10)
        _refused(reply, "signing.max_expiry (7d)")


def test_a_signed_put_may_bind_its_body_and_type(private: LiveServer) -> None:
    body = b"the one body"
    done = _cli(private, "sign", "in/bound.txt", "--method", "PUT", "--sha256",
                _sha256(body).upper(), "--type", "Text/Plain; charset=UTF-8")
    assert done.exit_code == 0, done.output
    url = _target(done.stdout.strip())
    assert f"sha256={_sha256(body)}" in url and "type=text%2Fplain%3B%20charset%3Dutf-8" in url
    typed = {"content-type": "text/plain; charset=utf-8"}
    with private.client(auth=False) as anon:
        reply = anon.put(url, content=b"another body", headers=typed)
        assert reply.status_code == 400 and reply.json()["error"] == "checksum_mismatch"
        reply = anon.put(url, content=body, headers={**typed,
                                                     "x-checksum-sha256": _sha256(b"x")})
        assert reply.status_code == 400 and reply.json()["error"] == "checksum_mismatch"
        _refused(anon.put(url, content=body, headers={"content-type": "text/html"}),
                 "signed for Content-Type text/plain; charset=utf-8, not Content-Type text/html")
        _refused(anon.put(url, content=body), "not no Content-Type")
        # The limits are under the signature: changed or dropped, nothing matches.
        _refused(anon.put(url.replace(_sha256(body), _sha256(b"another body")),
                          content=b"another body", headers=typed), "does not match")
        dropped = url.replace("&type=text%2Fplain%3B%20charset%3Dutf-8", "")
        _refused(anon.put(dropped, content=body), "does not match")
        assert private.store.registry.read.files.get("in/bound.txt") is None  # none stored
        reply = anon.put(url, content=body, headers={"content-type": "TEXT/plain;charset=utf-8"})
        assert reply.status_code == 201, reply.text
        # A URL that names no limit is signed as before they existed: older URLs keep working.
        key, expires = _key(private), int(time.time()) + 600
        plain = key.sign("GET", "in/bound.txt", expires)
        assert plain == signing.signed_url(key.key(), "GET", "in/bound.txt", expires)
        assert "sha256=" not in plain and "type=" not in plain and "once=" not in plain
        assert anon.get(_target(plain)).content == body
        assert anon.get("/files/in/bound.txt?type=x&once=y").status_code == 401  # unsigned
    with private.client() as owner:
        assert owner.get("/files/in/bound.txt").content == body
        signed = owner.post("/admin/api/sign", json={
            "path": "in/api.bin", "method": "PUT", "sha256": _sha256(b"api"),
            "type": "application/ld+json"}).json()
        for bad in ({"sha256": "abc"}, {"type": "not a type"}, {"type": 3},
                    {"method": "GET", "sha256": _sha256(b"api")}, {"once": "yes"}):
            reply = owner.post("/admin/api/sign", json={"path": "x", "method": "PUT", **bad})
            assert reply.status_code == 400, (bad, reply.text)
    with private.client(auth=False) as anon:
        ld = {"content-type": "application/ld+json"}  # "+" survives the query string
        assert anon.put(_target(signed["url"]), content=b"apx", headers=ld).status_code == 400
        assert anon.put(_target(signed["url"]), content=b"api", headers=ld).status_code == 201
    for bad in (["--sha256", "00"], ["--type", "text"], ["--method", "GET", "--type", "a/b"]):
        args = ["sign", "x", *bad] if "--method" in bad else ["sign", "x", "--method", "PUT",
                                                                *bad]
        done = _cli(private, *args)
        assert done.exit_code == 2 and "error" in done.output.lower(), (bad, done.output)


def test_token_rotate_with_signing_key_revokes_signed_urls(private: LiveServer) -> None:
    url = _target(_key(private).sign("GET", "docs/report.pdf", int(time.time()) + 600))
    with private.client(auth=False) as anon:
        done = _cli(private, "token", "--rotate")  # no terminal: nothing asked, the way said
        assert done.exit_code == 0, done.output
        token = (private.settings.data_dir / "token").read_text().strip()
        assert "--signing-key" in done.stderr and done.stdout.strip() == token
        assert anon.get(url).status_code == 200  # signed URLs survive a token rotation alone
        done = _cli(private, "token", "--rotate", "--signing-key")
        assert done.exit_code == 0, done.output
        assert "new signing key" in done.stderr
        wait_for(lambda: anon.get(url).status_code == 403, timeout=5)
        _refused(anon.get(url), "key since rotated")
    assert _cli(private, "token", "--signing-key").exit_code == 2


def test_token_rotate_asks_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    data = tmp_path / "data"
    env = {**os.environ, "FILESTORE_STORAGE__DATA_DIR": str(data)}
    env.pop("FILESTORE_CONFIG", None)
    first = subprocess.run([sys.executable, "-m", "filestore", "token"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    key_file = data / signing.KEY_FILE
    signing.SigningKey(data).key()  # the key exists, as after a first signed URL
    for answer, rotated in ((b"n\n", False), (b"\n", False), (b"y\n", True)):
        before = key_file.read_text()
        leader, follower = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "filestore", "token", "--rotate"],
                                    env=env, stdin=follower, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            os.write(leader, answer)  # read by the prompt once it asks (the tty buffers it)
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(follower)
            os.close(leader)
        assert proc.returncode == 0, err
        assert b"replace the signing key too?" in err
        assert out.decode().strip() == (data / "token").read_text().strip()  # the token alone
        assert (key_file.read_text() != before) == rotated, answer
