"""Signed URLs an account mints (`acct=` under the signature): they work while the account is
active, are refused (403) within a second in every worker process once it is suspended, again
after it is resumed, never after it is removed (nor for a later account of the same id); `acct=`
cannot be dropped, changed or added; single use and the body bindings hold with it; the
administrator's URLs name no account and outlive a suspension."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import LiveServer, registry_db, wait_for

from filestore import signing


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _as(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=_bearer(token), timeout=30)


def _create(owner: httpx.Client, account: str) -> str:
    reply = owner.post("/admin/api/accounts", json={"id": account, "name": account.title()})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def _sign(client: httpx.Client, path: str, **fields: Any) -> str:
    """The target (`/files/...?...`) of a URL `client` mints."""
    reply = client.post("/admin/api/sign", json={"path": path, **fields})
    assert reply.status_code == 200, reply.text
    parts = urlsplit(reply.json()["url"])
    return f"{parts.path}?{parts.query}"


def _state(owner: httpx.Client, account: str, state: str) -> None:
    reply = owner.patch(f"/admin/api/accounts/{account}", json={"state": state})
    assert reply.status_code == 200 and reply.json()["state"] == state, reply.text


def _refused(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 403, (reply.status_code, reply.text)
    assert reply.json()["error"] == "bad_signature"
    assert reason in reply.json()["detail"], reply.json()["detail"]


def _answers(url: str, target: str, method: str = "GET", count: int = 12,
             content: bytes | None = None) -> set[int]:
    """The statuses of `count` requests, each on a connection of its own (spread over the
    server's worker processes)."""
    with httpx.Client(base_url=url, timeout=10,
                      limits=httpx.Limits(max_keepalive_connections=0)) as anon:
        return {anon.request(method, target, content=content).status_code
                for _ in range(count)}


def _refusals_by_process(data: Path) -> dict[str, float]:
    """How many `/files/` requests each worker process answered with 403, from its metrics
    file (written once a second; prometheus-client's multiprocess files)."""
    from prometheus_client.mmap_dict import MmapedDict

    found: dict[str, float] = {}
    for path in (data / "metrics").glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(  # type: ignore[no-untyped-call]
                str(path)):
            _, name, labels, *_ = json.loads(key)
            if name == "filestore_http_requests_total" and labels.get("route") == "files" \
                    and labels.get("status") == "403" and value:
                found[path.stem] = found.get(path.stem, 0) + value
    return found


def test_an_accounts_urls_follow_its_state_in_every_worker(serve_process: Any,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve_process(data, server__workers="2", auth__public_read="false").start()
    url = server.url
    with server.client() as owner:
        token = _create(owner, "acme")
        with httpx.Client(base_url=url, headers=_bearer(token), timeout=30) as acme:
            assert acme.put("/files/acme/doc.txt", content=b"the doc").status_code == 201
            get = _sign(acme, "acme/doc.txt", expires="10m")
            put = _sign(acme, "acme/in/up.txt", method="PUT", expires="10m")
        assert "&acct=acme." in get and "&acct=acme." in put
        # The administrator's URL for the same file names no account (see below).
        admin_get = _sign(owner, "acme/doc.txt", expires="10m")
        assert "acct=" not in admin_get

        assert _answers(url, get) == {200}
        assert _answers(url, put, "PUT", 1, b"first") == {201}
        assert _answers(url, put, "PUT", 4, b"again") == {200}

        _state(owner, "acme", "suspended")
        wait_for(lambda: _answers(url, get) == {403}, timeout=1.0)  # within a second
        assert _answers(url, get, count=24) == {403}
        assert _answers(url, get, "HEAD") == {403}
        assert _answers(url, put, "PUT", 12, b"while suspended") == {403}
        with httpx.Client(base_url=url, timeout=10) as anon:
            _refused(anon.get(get), "the account 'acme' that signed this URL is suspended")
            _refused(anon.put(put, content=b"x"), "is suspended")
            # The administrator's URL is the operator's grant, not the account's: it works on.
            assert anon.get(admin_get).content == b"the doc"
        assert owner.get("/files/acme/in/up.txt").content == b"again"  # no refused PUT landed

        _state(owner, "acme", "active")
        wait_for(lambda: _answers(url, get) == {200}, timeout=1.0)
        assert _answers(url, get, count=24) == {200}
        assert _answers(url, put, "PUT", 4, b"resumed") == {200}

        # Removed (it must hold no files for that): refused as well, for good.
        for path in ("acme/doc.txt", "acme/in/up.txt"):
            assert owner.delete(f"/files/{path}").status_code == 204
        assert owner.delete("/admin/api/accounts/acme").status_code == 204
        wait_for(lambda: _answers(url, get) == {403}, timeout=1.0)
        assert _answers(url, put, "PUT", 12, b"after removal") == {403}
        with httpx.Client(base_url=url, timeout=10) as anon:
            _refused(anon.get(get), "the account 'acme' that signed this URL was removed")
        assert owner.get("/files/acme/in/up.txt").status_code == 404  # nothing was stored
    # Both worker processes answered, and both refused: none lagged behind.
    wait_for(lambda: len(_refusals_by_process(data)) == 2, timeout=5)
    code, output = server.stop()
    assert code == 0, output


def test_acct_is_under_the_signature(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    with server.client() as owner:
        acme, bob = _create(owner, "acme"), _create(owner, "bob")
        assert owner.put("/files/acme/a.txt", content=b"acme's").status_code == 201
        assert owner.put("/files/bob/a.txt", content=b"bob's").status_code == 201
        admin_url = _sign(owner, "acme/a.txt")
    with _as(server, acme) as minter:
        url = _sign(minter, "acme/a.txt")
        put = _sign(minter, "acme/new.txt", method="PUT")
    acct = parse_qs(urlsplit(url).query)["acct"][0]
    account_id, made = acct.split(".")
    with server.client(auth=False) as anon:
        assert anon.get(url).content == b"acme's"
        # Dropped, changed to another account (existing or not), another stamp, or added to
        # the administrator's URL: the signature matches none of them, and the answers are
        # alike whether the named account exists, so nothing is learnt about accounts.
        tampered = [url.replace(f"&acct={acct}", ""),
                    url.replace(f"acct={acct}", f"acct=bob.{made}"),
                    url.replace(f"acct={acct}", f"acct=nobody.{made}"),
                    url.replace(f"acct={acct}", f"acct={account_id}.{int(made) + 1}"),
                    admin_url.replace("&sig=", f"&acct={acct}&sig="),
                    put.replace(f"&acct={acct}", "")]
        replies = [anon.request("PUT" if "new.txt" in t else "GET", t, content=b"x"
                                if "new.txt" in t else None) for t in tampered]
        for reply in replies:
            _refused(reply, "does not match")
        assert len({reply.text for reply in replies}) == 1
        moved = url.replace("/files/acme/a.txt", "/files/bob/a.txt")  # another path: no match
        _refused(anon.get(moved), "does not match")
        for bad in ("acme", "acme.", "Acme.1", "acme.1.2", "-acme.1", "acme.x", ""):
            _refused(anon.get(url.replace(f"acct={acct}", f"acct={bad}")),
                     "acct must be an account id")
        _refused(anon.get(url.replace("&sig=", f"&acct={acct}&sig=")), "acct is given more")
        assert anon.get(admin_url).content == b"acme's"
        assert server.store.registry.read.files.get("acme/new.txt") is None

    # Defence in depth: signed (here by hand, with the key) for acme but a path outside acme/.
    key = signing.SigningKey(server.settings.data_dir)
    expires = int(time.time()) + 600
    stray = signing.signed_url(key.key(), "GET", "bob/a.txt", expires, account=acct)
    with server.client(auth=False) as anon:
        _refused(anon.get(stray), "may grant only paths under 'acme/'")
    account = server.service.accounts.find("acme")
    with pytest.raises(ValueError, match="only paths under 'acme/'"):
        key.sign("GET", "bob/a.txt", expires, account=account)
    with _as(server, bob) as minter:  # the API refuses it too
        assert minter.post("/admin/api/sign", json={"path": "acme/a.txt"}).status_code == 403
    # A caller that cannot look accounts up grants no account's URL.
    query = urlsplit(url).query.encode()
    with pytest.raises(signing.SignatureRefused, match="cannot check the account"):
        key.check(query, "GET", "acme/a.txt")
    grant = key.check(query, "GET", "acme/a.txt", accounts=server.service.accounts.find)
    assert grant is not None and grant.account == "acme"


def test_a_removed_accounts_urls_stay_refused_for_a_new_account_of_its_id(
        make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    with server.client() as owner:
        with _as(server, _create(owner, "acme")) as minter:
            put = _sign(minter, "acme/drop.txt", method="PUT")
        assert owner.delete("/admin/api/accounts/acme").status_code == 204
        fresh = _create(owner, "acme")  # another customer, the same id
        with server.client(auth=False) as anon:
            _refused(anon.put(put, content=b"into the new acme"), "was removed")
        assert owner.get("/files/acme/drop.txt").status_code == 404
        with _as(server, fresh) as minter:
            put = _sign(minter, "acme/drop.txt", method="PUT")
        with server.client(auth=False) as anon:
            assert anon.put(put, content=b"the new acme's").status_code == 201


def _nonce_state(server: LiveServer, nonce: str) -> str | None:
    conn = registry_db(server)
    try:
        row = conn.execute("SELECT spent FROM grants WHERE nonce = ?", (nonce,)).fetchone()
    finally:
        conn.close()
    return None if row is None else ("spent" if row["spent"] is not None else "claimed")


def test_once_and_body_bindings_hold_with_an_account(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    body = b"exactly this"
    sha256 = hashlib.sha256(body).hexdigest()
    typed = {"content-type": "text/plain"}
    with server.client() as owner:
        token = _create(owner, "acme")
        with _as(server, token) as acme:
            reply = acme.post("/admin/api/sign", json={
                "path": "acme/once.txt", "method": "PUT", "sha256": sha256,
                "type": "text/plain", "once": True})
            assert reply.status_code == 200, reply.text
            assert reply.json()["account"] == "acme" and reply.json()["once"] is True
            parts = urlsplit(reply.json()["url"])
            put = f"{parts.path}?{parts.query}"
            get = _sign(acme, "acme/once.txt", once=True)
        assert owner.post("/admin/api/sign", json={"path": "acme/once.txt"}
                          ).json()["account"] is None
        query = parse_qs(parts.query)
        assert list(query) == ["expires", "acct", "sha256", "type", "once", "sig"]
        nonce = query["once"][0]
        with server.client(auth=False) as anon:
            _state(owner, "acme", "suspended")
            _refused(anon.put(put, content=body, headers=typed), "is suspended")
            assert _nonce_state(server, nonce) is None  # a refusal does not spend it
            _state(owner, "acme", "active")
            # The bindings still hold under the account's signature.
            reply = anon.put(put, content=b"another body", headers=typed)
            assert reply.status_code == 400 and reply.json()["error"] == "checksum_mismatch"
            _refused(anon.put(put, content=body, headers={"content-type": "text/html"}),
                     "signed for Content-Type text/plain")
            _refused(anon.put(put.replace("&type=text%2Fplain", ""), content=body,
                              headers=typed), "does not match")
            assert _nonce_state(server, nonce) is None
            assert anon.put(put, content=body, headers=typed).status_code == 201
            _refused(anon.put(put, content=body, headers=typed), "already used")
            # A single-use GET: suspension refuses it unspent; resumed, it serves once.
            _state(owner, "acme", "suspended")
            _refused(anon.get(get), "is suspended")
            _state(owner, "acme", "active")
            assert anon.get(get).content == body
            _refused(anon.get(get), "already used")
