"""Accounts through the HTTP API: `/admin/api/accounts` (create, list, get, patch, delete, tokens),
who may call what (the administrator, an account for its own), each account's token confined to
its prefix against hostile paths, quotas, revocation and suspension on a running 2-worker server,
tokens kept out of every answer but their creation and out of the log, and usage counters that
equal a recount."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, raw_request, registry_db, wait_for
from test_sessions import sign_in

TOKEN = re.compile(r"fsa_[A-Za-z0-9_-]{40,}")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def as_account(server: Any, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=bearer(token), timeout=30)


def create(owner: httpx.Client, account: str, **fields: Any) -> str:
    """A new account; its first token."""
    reply = owner.post("/admin/api/accounts", json={"id": account, "name": account.title(),
                                                     **fields})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["token"])


def listing(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """Every item of a `/files/` listing, following `next`."""
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        reply = client.get("/files/", params={**params, "after": after, "limit": "1000"})
        assert reply.status_code == 200, reply.text
        items += reply.json()["items"]
        if reply.json()["next"] is None:
            return items
        after = reply.json()["next"]


# -- the API's shapes ----------------------------------------------------------------------------


def test_create_list_get_patch_and_delete(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        reply = owner.post("/admin/api/accounts",
                           json={"id": "acme", "name": "Acme Inc", "quota": "10MiB"})
        assert reply.status_code == 201, reply.text
        created = reply.json()
        assert reply.headers["location"] == "/admin/api/accounts/acme"
        assert set(created) == {"id", "name", "created", "state", "quota", "usage", "token"}
        assert (created["id"], created["name"], created["state"], created["quota"]) == (
            "acme", "Acme Inc", "active", 10 * 1024**2)
        assert TOKEN.fullmatch(created["token"])
        assert created["usage"] == {"files": 0, "bytes": 0, "local_bytes": 0, "remote_bytes": 0,
                                    "remotes": {}, "uploads": 0}
        assert owner.post("/admin/api/accounts", json={"id": "acme", "name": "Again"}
                          ).status_code == 409
        bad: Any
        for bad in ({"id": "Acme", "name": "x"}, {"id": "-acme", "name": "x"},
                    {"id": "a/b", "name": "x"}, {"id": "", "name": "x"}, {"id": 3, "name": "x"},
                    {"id": "a" * 64, "name": "x"}, {"id": "ok"}, {"id": "ok", "name": " "},
                    {"id": "ok", "name": "x\ny"}, {"id": "ok", "name": "x", "quota": -1},
                    {"id": "ok", "name": "x", "quota": "lots"},
                    {"id": "ok", "name": "x", "quota": True},
                    {"id": "ok", "name": "x", "state": "active"}, [], "acme"):
            reply = owner.post("/admin/api/accounts", json=bad)
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.json()["error"] == "bad_request", reply.json()
        assert owner.get("/admin/api/accounts/ok").status_code == 404  # none was made

        # A page at a time, in id order, like the failed-uploads list.
        for account in ("delta", "bravo", "charlie"):
            create(owner, account, quota=1000)
        seen, after = [], ""
        while True:
            page = owner.get("/admin/api/accounts", params={"limit": "2", "after": after}).json()
            assert len(page["items"]) <= 2
            seen += [item["id"] for item in page["items"]]
            assert all("token" not in item and "usage" in item for item in page["items"])
            if page["next"] is None:
                break
            after = page["next"]
        assert seen == ["acme", "bravo", "charlie", "delta"]
        assert owner.get("/admin/api/accounts?limit=0").status_code == 400
        assert owner.get("/admin/api/accounts?limit=1001").status_code == 400

        got = owner.get("/admin/api/accounts/acme")
        assert got.status_code == 200 and got.json() == {
            key: value for key, value in created.items() if key != "token"}
        assert owner.get("/admin/api/accounts/nobody").json()["error"] == "not_found"

        changed = owner.patch("/admin/api/accounts/acme",
                              json={"name": "Acme Ltd", "quota": 5000, "state": "suspended"})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["name"], changed.json()["quota"], changed.json()["state"]) == (
            "Acme Ltd", 5000, "suspended")
        assert owner.patch("/admin/api/accounts/acme", json={"state": "active"}
                           ).json()["state"] == "active"
        assert owner.get("/admin/api/accounts/acme").json()["name"] == "Acme Ltd"
        for bad in ({"state": "gone"}, {"quota": "x"}, {"name": ""}, {"id": "other"}, {},
                    {"name": None}, [1]):
            reply = owner.patch("/admin/api/accounts/acme", json=bad)
            assert reply.status_code == 400, (bad, reply.text)
        assert owner.patch("/admin/api/accounts/nobody", json={"name": "x"}).status_code == 404

        # Deleting: refused while it holds files (purging: test_account_purge.py).
        token = created["token"]
        with as_account(server, token) as acme:
            assert acme.put("/files/acme/a.txt", content=b"hello").status_code == 201
        reply = owner.delete("/admin/api/accounts/acme")
        assert reply.status_code == 409 and "1 files" in reply.json()["detail"], reply.text
        assert owner.delete("/admin/api/accounts/acme?purge=maybe").status_code == 400
        assert owner.get("/admin/api/accounts/acme").status_code == 200  # all of that kept it
        assert owner.delete("/files/acme/a.txt").status_code == 204
        assert owner.delete("/admin/api/accounts/acme?purge=false").status_code == 204
        assert owner.get("/admin/api/accounts/acme").status_code == 404
        assert owner.delete("/admin/api/accounts/acme").status_code == 404
        with as_account(server, token) as acme:  # its tokens went with it
            assert acme.get("/files/").status_code == 401


def test_tokens_are_minted_listed_and_revoked(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        first = create(owner, "acme")
        reply = owner.post("/admin/api/accounts/acme/tokens", json={"name": "laptop"})
        assert reply.status_code == 201, reply.text
        assert set(reply.json()) == {"name", "token"} and reply.json()["name"] == "laptop"
        laptop = reply.json()["token"]
        assert TOKEN.fullmatch(laptop) and laptop != first
        assert owner.post("/admin/api/accounts/acme/tokens", json={"name": "laptop"}
                          ).status_code == 409
        for bad in ({}, {"name": ""}, {"name": "a b"}, {"name": "x" * 65}, {"name": 1},
                    {"name": "ok", "extra": 1}, ["laptop"]):
            reply = owner.post("/admin/api/accounts/acme/tokens", json=bad)
            assert reply.status_code == 400, (bad, reply.text)
        assert owner.post("/admin/api/accounts/nobody/tokens", json={"name": "x"}
                          ).status_code == 404
        items = owner.get("/admin/api/accounts/acme/tokens").json()["items"]
        assert [item["name"] for item in items] == ["default", "laptop"]
        assert all(set(item) == {"name", "created", "last_used"} for item in items)
        assert owner.get("/admin/api/accounts/nobody/tokens").status_code == 404

        with as_account(server, laptop) as client:
            assert client.get("/files/").status_code == 200
            assert owner.delete("/admin/api/accounts/acme/tokens/laptop").status_code == 204
            assert client.get("/files/").status_code == 401  # at once
        with as_account(server, first) as client:
            assert client.get("/files/").status_code == 200  # the other token stays
        assert owner.delete("/admin/api/accounts/acme/tokens/laptop").status_code == 404
        assert [item["name"] for item in
                owner.get("/admin/api/accounts/acme/tokens").json()["items"]] == ["default"]
        # At most 100 tokens an account (its own token may mint them, but not without end).
        for n in range(99):
            reply = owner.post("/admin/api/accounts/acme/tokens", json={"name": f"t{n}"})
            assert reply.status_code == 201, reply.text
        reply = owner.post("/admin/api/accounts/acme/tokens", json={"name": "one-more"})
        assert reply.status_code == 409 and "100 tokens" in reply.json()["detail"]


# -- who may call what ---------------------------------------------------------------------------


def test_an_account_token_reads_its_account_and_manages_only_its_own_tokens(
        make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        token = create(owner, "acme", quota=10_000)
        create(owner, "bob")
    with as_account(server, token) as acme:
        mine = acme.get("/admin/api/accounts/acme")
        assert mine.status_code == 200 and mine.json()["usage"]["files"] == 0
        assert "token" not in mine.json()
        # Another account is refused alike whether it exists or not.
        other = [acme.get(f"/admin/api/accounts/{name}") for name in ("bob", "nobody")]
        assert [r.status_code for r in other] == [403, 403]
        assert other[0].json() == other[1].json()
        assert other[0].json()["error"] == "forbidden"
        for name in ("bob", "nobody"):
            for reply in (acme.get(f"/admin/api/accounts/{name}/tokens"),
                          acme.post(f"/admin/api/accounts/{name}/tokens", json={"name": "x"}),
                          acme.delete(f"/admin/api/accounts/{name}/tokens/default"),
                          acme.patch(f"/admin/api/accounts/{name}", json={"quota": 0}),
                          acme.delete(f"/admin/api/accounts/{name}")):
                assert reply.status_code == 403, (name, reply.request.method, reply.text)
                assert reply.json() == other[0].json() or reply.json()["error"] == "forbidden"
        # Not its own settings, not the list, not a new account.
        for change in ({"quota": 0}, {"state": "active"}, {"name": "Mine now"}):
            assert acme.patch("/admin/api/accounts/acme", json=change).status_code == 403
        assert acme.delete("/admin/api/accounts/acme").status_code == 403
        assert acme.get("/admin/api/accounts").status_code == 403
        assert acme.post("/admin/api/accounts", json={"id": "x", "name": "x"}
                         ).status_code == 403
        # Its own tokens: mint, list, revoke.
        reply = acme.post("/admin/api/accounts/acme/tokens", json={"name": "ci"})
        assert reply.status_code == 201
        ci = reply.json()["token"]
        assert [t["name"] for t in acme.get("/admin/api/accounts/acme/tokens").json()[
            "items"]] == ["ci", "default"]
        with as_account(server, ci) as second:
            assert second.put("/files/acme/ci.txt", content=b"ci").status_code == 201
            assert acme.delete("/admin/api/accounts/acme/tokens/ci").status_code == 204
            assert second.get("/files/").status_code == 401
        # The rest of the admin API: the administrator's alone.
        refused = [
            acme.get("/admin/api/stats"), acme.get("/admin/api/settings"),
            acme.put("/admin/api/settings", json={"upload": {"delay": "1s"}}),
            acme.get("/admin/api/jobs"),
            acme.post("/admin/api/jobs", json={"kind": "move-to-cloud"}),
            acme.get("/admin/api/jobs/1"), acme.post("/admin/api/jobs/1/cancel"),
            acme.get("/admin/api/queue/failed"), acme.post("/admin/api/queue/retry",
                                                           json={"all": True}),
            acme.post("/admin/api/queue/drop", json={"path": "acme/ci.txt"}),
            acme.post("/admin/api/sessions/end-all"),
            acme.get("/admin/api/files/acme/ci.txt"),
            acme.post("/admin/api/files/acme/ci.txt/delete"),
        ]
        for reply in refused:
            assert reply.status_code in (401, 403), (reply.request.url, reply.text)
    with server.client() as owner:
        assert owner.get("/files/acme/ci.txt").content == b"ci"  # the delete was refused
        assert owner.get("/admin/api/jobs").json()["items"] == []
        assert server.store.settings.upload.delay != 1


def test_the_admin_session_may_manage_accounts_with_its_csrf_token(make_server: Any) -> None:
    server: LiveServer = make_server()
    browser, csrf = sign_in(server.url, server.token)
    assert browser.get("/admin/api/accounts").status_code == 200
    assert browser.post("/admin/api/accounts", json={"id": "acme", "name": "A"}
                        ).status_code == 403
    reply = browser.post("/admin/api/accounts", json={"id": "acme", "name": "A"},
                         headers={"x-csrf-token": csrf})
    assert reply.status_code == 201
    assert browser.patch("/admin/api/accounts/acme", json={"quota": 1}).status_code == 403
    assert browser.patch("/admin/api/accounts/acme", json={"quota": 1},
                         headers={"x-csrf-token": csrf}).json()["quota"] == 1
    assert browser.post("/admin/api/accounts/acme/tokens", json={"name": "x"}).status_code == 403
    assert browser.delete("/admin/api/accounts/acme/tokens/default").status_code == 403
    assert browser.delete("/admin/api/accounts/acme").status_code == 403
    assert browser.delete("/admin/api/accounts/acme", headers={"x-csrf-token": csrf}
                          ).status_code == 204
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        assert anon.get("/admin/api/accounts").status_code == 401
        assert anon.get("/admin/api/accounts/acme").status_code == 401
        assert anon.get("/admin/api/accounts", headers=bearer("fsa_wrong")).status_code == 401


def test_an_account_signs_urls_for_its_own_paths_only(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    with server.client() as owner:
        token = create(owner, "acme")
        assert owner.put("/files/bob/secret.txt", content=b"bob's").status_code == 201
    with as_account(server, token) as acme, httpx.Client(timeout=10) as anon:
        assert acme.put("/files/acme/report.txt", content=b"mine").status_code == 201
        reply = acme.post("/admin/api/sign", json={"path": "acme/report.txt"})
        assert reply.status_code == 200, reply.text
        assert anon.get(reply.json()["url"]).content == b"mine"
        put = acme.post("/admin/api/sign", json={"path": "acme/in/new.txt", "method": "PUT"})
        assert anon.put(put.json()["url"], content=b"new").status_code == 201
        refusals = [acme.post("/admin/api/sign", json={"path": path})
                    for path in ("bob/secret.txt", "bob/missing.txt", "acmex/x", "top.txt")]
        assert [r.status_code for r in refusals] == [403] * 4
        assert len({r.text for r in refusals}) == 1  # nothing said about what exists
        assert acme.post("/admin/api/sign", json={"path": "acme/../bob/secret.txt"}
                         ).status_code == 400
        assert acme.post("/admin/api/sign", json={"path": "bob/secret.txt", "method": "PUT"}
                         ).status_code == 403


# -- confinement ---------------------------------------------------------------------------------

# Targets after `/files/`, sent as they are (no client-side normalisation): each pair names an
# existing and a missing file of another account the same way.
HOSTILE = [
    "bob/{f}", "bob%2F{f}", "acme/../bob/{f}", "acme/%2e%2e/bob/{f}", "acme/%2E%2E/bob/{f}",
    "acme%2F..%2Fbob%2F{f}", "acme/..%2Fbob/{f}", "acme/%252e%252e/bob/{f}", "./acme/../bob/{f}",
    "acme/./../bob/{f}", "%2Fbob/{f}", "acmex/{f}", "ACME/{f}", "acme%00/{f}", "acme\\..\\bob/{f}",
]


def _answer(server: Any, method: str, target: str, token: str) -> tuple[int, bytes]:
    headers = {**bearer(token), "Content-Length": "0"} if method == "PUT" else bearer(token)
    return raw_request(server, "/files/" + target, method, headers)


def test_each_token_is_confined_to_its_prefix(make_server: Any) -> None:
    server: LiveServer = make_server(auth__public_read="false")
    with server.client() as owner:
        acme_token, bob_token = create(owner, "acme"), create(owner, "bob")
        for path in ("bob/secret.txt", "acmex/secret.txt", "ACME/secret.txt"):
            assert owner.put(f"/files/{path}", content=b"not acme's").status_code == 201
        before = listing(owner)
    with as_account(server, acme_token) as acme:
        assert acme.put("/files/acme/mine.txt", content=b"mine").status_code == 201
        assert acme.get("/files/acme/mine.txt").content == b"mine"
        assert acme.head("/files/acme/mine.txt").status_code == 200
        assert acme.get("/files/acme%2Fmine.txt").content == b"mine"  # the same path
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        for pattern in HOSTILE:
            existing = _answer(server, method, pattern.format(f="secret.txt"), acme_token)
            missing = _answer(server, method, pattern.format(f="missing.txt"), acme_token)
            assert existing[0] in (400, 403), (method, pattern, existing)
            assert existing == missing, (method, pattern, existing, missing)
    # The other account's token is held to its own prefix the same way.
    assert _answer(server, "GET", "acme/mine.txt", bob_token)[0] == 403
    assert _answer(server, "DELETE", "acme/mine.txt", bob_token)[0] == 403
    with server.client() as owner:
        after = listing(owner)
        assert [i for i in after if i["path"] != "acme/mine.txt"] == before  # nothing changed
        assert owner.get("/files/bob/secret.txt").content == b"not acme's"
    assert not any(server.settings.data_dir.joinpath("files", "bob").glob("missing*"))


def test_a_listing_shows_only_the_accounts_own_files(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        acme_token, bob_token = create(owner, "acme"), create(owner, "bob")
        for path in ("acme/a.txt", "acme/b/c.txt", "acmex/x.txt", "bob/y.txt", "top.txt",
                     "a.txt", "zzz/z.txt"):
            assert owner.put(f"/files/{path}", content=path.encode()).status_code == 201
    own = ["acme/a.txt", "acme/b/c.txt"]
    with as_account(server, acme_token) as acme, as_account(server, bob_token) as bob:
        assert [i["path"] for i in listing(acme)] == own
        assert [i["path"] for i in listing(acme, prefix="acme/")] == own
        assert [i["path"] for i in listing(acme, prefix="acme/b/")] == ["acme/b/c.txt"]
        assert [i["path"] for i in listing(bob)] == ["bob/y.txt"]
        refused = [acme.get("/files/", params={"prefix": prefix})
                   for prefix in ("bob/", "nobody/", "acmex/", "acme", "a", "zzz/")]
        assert [r.status_code for r in refused] == [403] * 6, [r.text for r in refused]
        assert len({r.text for r in refused}) == 1
        for prefix in ("acme/../bob/", "../", "acme/%2e%2e/"):
            assert acme.get("/files/", params={"prefix": prefix}).status_code == 400
        # A cursor pointing into (or past, or before) another account's files shows nothing
        # but the account's own, and the next cursor stays inside its prefix.
        for after in ("", "a", "a.txt", "acme", "acme/", "acmex/x.txt", "bob/", "bob/y.txt",
                      "top.txt", "zzz/", "\U0010ffff"):
            for client, mine in ((acme, own), (bob, ["bob/y.txt"])):
                reply = client.get("/files/", params={"after": after, "limit": "1"})
                assert reply.status_code == 200, reply.text
                paths = [i["path"] for i in reply.json()["items"]]
                assert set(paths) <= set(mine), (after, paths)
                following = reply.json()["next"]
                assert following is None or following in mine, (after, following)
        # Page by page from the start: exactly its own files.
        seen, after = [], ""
        while True:
            page = acme.get("/files/", params={"after": after, "limit": "1"}).json()
            seen += [i["path"] for i in page["items"]]
            if page["next"] is None:
                break
            after = page["next"]
        assert seen == own


# -- quotas --------------------------------------------------------------------------------------


def _temp_files(server: Any) -> list[Path]:
    return sorted((server.settings.data_dir / "tmp").iterdir())


def _usage(owner: httpx.Client, account: str) -> dict[str, Any]:
    reply = owner.get(f"/admin/api/accounts/{account}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["usage"])


def test_quota_refuses_sized_and_chunked_bodies_and_keeps_nothing(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        token = create(owner, "acme", quota=10_000)
    with server.client() as owner, as_account(server, token) as acme:
        assert acme.put("/files/acme/a.bin", content=b"a" * 6000).status_code == 201
        held = _usage(owner, "acme")
        assert (held["files"], held["bytes"]) == (1, 6000)

        def chunks(count: int, size: int) -> Iterator[bytes]:
            for _ in range(count):
                yield b"c" * size

        sized = acme.put("/files/acme/b.bin", content=b"b" * 5000)
        chunked = acme.put("/files/acme/b.bin", content=chunks(5, 1000))  # no Content-Length
        assert "content-length" not in chunked.request.headers
        for reply in (sized, chunked):
            assert reply.status_code == 507, reply.text
            assert reply.json()["error"] == "quota_exceeded", reply.json()
            assert "4,000 bytes left" in reply.json()["detail"], reply.json()
        # Nothing of either is kept: no file, no temp file, no intent, the same usage.
        assert owner.get("/files/acme/b.bin").status_code == 404
        assert not (server.settings.data_dir / "files" / "acme" / "b.bin").exists()
        assert _temp_files(server) == []
        with contextlib.closing(registry_db(server)) as conn:
            assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
        assert _usage(owner, "acme") == held

        # Replacing a file reuses its bytes; exactly the quota fits, one byte more does not.
        assert acme.put("/files/acme/a.bin", content=b"a" * 9000).status_code == 200
        assert acme.put("/files/acme/c.bin", content=b"c" * 1000).status_code == 201
        assert _usage(owner, "acme")["bytes"] == 10_000
        assert acme.put("/files/acme/d.bin", content=b"d").status_code == 507
        assert acme.put("/files/acme/d.bin", content=chunks(1, 1)).status_code == 507
        # The quota is the prefix's: the administrator's PUT there counts too.
        assert owner.put("/files/acme/d.bin", content=b"d").status_code == 507
        assert owner.put("/files/elsewhere/d.bin", content=b"d" * 20_000).status_code == 201
        assert _temp_files(server) == []
        # No quota (0): no limit.
        assert owner.patch("/admin/api/accounts/acme", json={"quota": 0}).status_code == 200
        assert acme.put("/files/acme/b.bin", content=chunks(5, 1000)).status_code == 201
        assert _usage(owner, "acme")["bytes"] == 15_000


# -- on a running server with two worker processes -----------------------------------------------


def _statuses(url: str, token: str, count: int = 12) -> set[int]:
    """The answers to `count` requests, each on a connection of its own (spread over the
    server's worker processes)."""
    found = set()
    for _ in range(count):
        with httpx.Client(base_url=url, timeout=10, headers=bearer(token)) as client:
            found.add(client.get("/files/").status_code)
    return found


def listings_answered(data: Path, status: int) -> dict[str, float]:
    """How many `/files/` listings each worker process answered with `status`, from its
    metrics file (written once a second; prometheus-client's multiprocess files)."""
    from prometheus_client.mmap_dict import MmapedDict

    found: dict[str, float] = {}
    for path in (data / "metrics").glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(  # type: ignore[no-untyped-call]
                str(path)):
            _, name, labels, *_ = json.loads(key)
            if name == "filestore_http_requests_total" and labels.get("route") == "list" \
                    and labels.get("status") == str(status) and value:
                found[path.stem] = found.get(path.stem, 0) + value
    return found


def test_revocation_and_suspension_reach_every_worker_within_a_second(
        serve_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve_process(data, server__workers="2").start()
    with server.client() as owner:
        token = create(owner, "acme")
        second = owner.post("/admin/api/accounts/acme/tokens", json={"name": "second"}
                            ).json()["token"]
        assert _statuses(server.url, token, 24) == {200}
        assert _statuses(server.url, second, 24) == {200}

        assert owner.delete("/admin/api/accounts/acme/tokens/second").status_code == 204
        wait_for(lambda: _statuses(server.url, second) == {401}, timeout=1.0)
        assert _statuses(server.url, second, 24) == {401}
        assert _statuses(server.url, token, 24) == {200}

        assert owner.patch("/admin/api/accounts/acme", json={"state": "suspended"}
                           ).status_code == 200
        wait_for(lambda: _statuses(server.url, token) == {403}, timeout=1.0)
        assert _statuses(server.url, token, 24) == {403}
        with as_account(server, token) as acme:
            assert acme.put("/files/acme/x", content=b"x").status_code == 403
            assert acme.get("/admin/api/accounts/acme").status_code == 403
            reply = acme.post("/admin/api/accounts/acme/tokens", json={"name": "more"})
            assert reply.status_code == 403 and "suspended" in reply.json()["detail"]

        assert owner.patch("/admin/api/accounts/acme", json={"state": "active"}
                           ).status_code == 200
        wait_for(lambda: _statuses(server.url, token) == {200}, timeout=1.0)
        assert _statuses(server.url, token, 24) == {200}
    # Both worker processes answered, and refused after each change: none lagged behind.
    for status in (401, 403):
        wait_for(lambda s=status: len(listings_answered(data, s)) == 2, timeout=5)


def test_tokens_appear_only_when_made_never_in_listings_or_the_log(
        serve_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve_process(data, server__workers="2", server__access_log="json").start()
    with server.client() as owner:
        made = owner.post("/admin/api/accounts", json={"id": "acme", "name": "Acme"})
        first = made.json()["token"]
        second = owner.post("/admin/api/accounts/acme/tokens", json={"name": "ci"}).json()[
            "token"]
        create(owner, "bob")
        with as_account(server, first) as acme:
            assert acme.put("/files/acme/a.txt", content=b"a").status_code == 201
            minted = acme.post("/admin/api/accounts/acme/tokens", json={"name": "own"})
            third = minted.json()["token"]
            answers = [
                owner.get("/admin/api/accounts"), owner.get("/admin/api/accounts/acme"),
                owner.get("/admin/api/accounts/acme/tokens"),
                owner.patch("/admin/api/accounts/acme", json={"quota": "1GiB"}),
                acme.get("/admin/api/accounts/acme"), acme.get("/admin/api/accounts/acme/tokens"),
                acme.get("/files/"), acme.get("/admin/api/accounts/bob"),
                acme.get("/admin/api/stats"), owner.get("/admin/api/stats"),
            ]
            assert owner.delete("/admin/api/accounts/acme/tokens/ci").status_code == 204
            answers.append(httpx.get(f"{server.url}/files/", headers=bearer(second)))  # 401
            answers.append(httpx.get(f"{server.url}/files/?token={second}", timeout=10))
    secrets = [first, second, third]
    hidden = secrets + [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    assert made.status_code == 201 and minted.status_code == 201
    for reply in answers:
        json.loads(reply.text)  # every answer is JSON
        leaked = [s for s in hidden if s in reply.text or s in str(reply.headers)]
        assert not leaked, (reply.request.url, reply.text)
    code, output = server.stop()
    assert code == 0, output
    logged = [json.loads(line) for line in output.splitlines() if line.startswith('{"time"')]
    assert ("POST", 201, "/admin/api/accounts/acme/tokens") in {
        (line["method"], line["status"], line["path"]) for line in logged}
    assert sum(line["status"] == 401 for line in logged) >= 2  # the log saw the refusals too
    assert not [s for s in hidden if s in output], output
    # The registry keeps hashes only: no token in its files.
    stored = b"".join(p.read_bytes() for p in data.glob("registry.sqlite3*"))
    assert not [s for s in secrets if s.encode() in stored]
    assert hashlib.sha256(first.encode()).hexdigest().encode() in stored  # the check can see


# -- usage counters ------------------------------------------------------------------------------


def _recount(owner: httpx.Client, account: str) -> dict[str, Any]:
    items = listing(owner, prefix=f"{account}/")
    remote = [i["size"] for i in items if i["location"] == "remote"]
    return {"files": len(items), "bytes": sum(i["size"] for i in items),
            "local_bytes": sum(i["size"] for i in items if i["location"] == "local"),
            "remote_bytes": sum(remote), "remotes": {"default": sum(remote)} if remote else {}}


def _counted(owner: httpx.Client, account: str) -> dict[str, Any]:
    usage = _usage(owner, account)
    usage.pop("uploads")
    usage["remotes"] = {k: v for k, v in usage["remotes"].items() if v}
    return usage


def test_usage_counters_equal_a_recount_after_a_random_workload(make_server: Any) -> None:
    server: LiveServer = make_server(upload__enabled="false", upload__delay="0s")
    rng = random.Random(20240607)
    with server.client() as owner:
        tokens = {"acme": create(owner, "acme"), "bob": create(owner, "bob")}
        clients = {name: as_account(server, token) for name, token in tokens.items()}
        # Paths of both accounts, a prefix that only starts like one, paths of no account, and
        # of an account made only afterwards (its files are counted when it is made).
        paths = [f"{p}/{d}{i}.bin" for p in ("acme", "bob", "acmex", "shared", "late")
                 for d in ("", "d/") for i in range(4)] + ["top.bin"]

        def workload(steps: int) -> None:
            for _ in range(steps):
                path = rng.choice(paths)
                account = path.split("/")[0]
                client = clients.get(account) if rng.random() < 0.7 else None
                client = client or owner
                if rng.random() < 0.7:
                    size = rng.choice([0, 1, rng.randrange(2, 5000)])
                    reply = client.put(f"/files/{path}", content=rng.randbytes(size))
                    assert reply.status_code in (200, 201), reply.text
                else:
                    assert client.delete(f"/files/{path}").status_code in (204, 404)

        try:
            workload(250)
            assert owner.post("/admin/api/accounts", json={"id": "late", "name": "Late"}
                              ).status_code == 201
            for account in ("acme", "bob", "late"):
                recount = _recount(owner, account)
                assert recount["files"] > 0, account  # the workload reached it
                assert _counted(owner, account) == recount, account
                assert _usage(owner, account)["uploads"] == 0
            # Uploads on: every file goes to the cloud, and the counters follow.
            reply = owner.put("/admin/api/settings", json={"upload": {"enabled": True}})
            assert reply.status_code == 200, reply.text
            expected = {a: _recount(owner, a)["files"] for a in ("acme", "bob", "late")}
            wait_for(lambda: all(i["location"] == "remote" for i in listing(owner)), timeout=60)
            for account in ("acme", "bob", "late"):
                recount = _recount(owner, account)
                assert recount["local_bytes"] == 0 and recount["remote_bytes"] == recount["bytes"]
                assert _counted(owner, account) == recount, account
                assert _usage(owner, account)["uploads"] == expected[account]
            # More of the same over files now in the cloud (replaced: local again, uploaded).
            workload(120)
            wait_for(lambda: all(i["location"] == "remote" for i in listing(owner)), timeout=60)
            for account in ("acme", "bob", "late"):
                assert _counted(owner, account) == _recount(owner, account), account
            with contextlib.closing(registry_db(server)) as conn:
                names = [row[0] for row in conn.execute(
                    "SELECT name FROM counters WHERE name LIKE 'account.%'")]
            assert {name.split(".")[1] for name in names} == {"acme", "bob", "late"}
        finally:
            for client in clients.values():
                client.close()


@pytest.mark.parametrize("quota", ["1KiB", 1024])
def test_a_quota_may_be_a_size_or_bytes(make_server: Any, quota: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as owner:
        token = create(owner, "acme", quota=quota)
        assert owner.get("/admin/api/accounts/acme").json()["quota"] == 1024
    with as_account(server, token) as acme:
        assert acme.put("/files/acme/a", content=b"a" * 1024).status_code == 201
        assert acme.put("/files/acme/b", content=b"b").status_code == 507
