"""The admin page's accounts, through its forms as a browser without JavaScript sends them, with a
session and its CSRF token, against a real uvicorn: create and list, suspend and resume, the
quota, tokens added and revoked, removal; a token shown once and on no later page; errors as 4xx
pages."""

from __future__ import annotations

import re
from typing import Any

import httpx
from conftest import LiveServer
from test_admin import sign_in

TOKEN = re.compile(r"fsa_[A-Za-z0-9_-]{20,}")
FORM = {"content-type": "application/x-www-form-urlencoded"}


class Browser:
    """A signed-in session that posts the page's forms and remembers every page it was sent."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.client, self.csrf = sign_in(server)
        self.seen: list[httpx.Response] = []

    def get(self, url: str) -> httpx.Response:
        r = self.client.get(url)
        self.seen.append(r)
        return r

    def post(self, url: str, csrf: bool = True, follow: bool = True,
             **fields: str) -> httpx.Response:
        data = {"csrf": self.csrf, **fields} if csrf else fields
        # As a browser sends a form, even an empty one.
        r = self.client.post(url, data=data, follow_redirects=follow, headers=FORM)
        self.seen += [*r.history, r]
        return r

    def create(self, account: str, name: str = "Acme Ltd", quota: str = "") -> str:
        """Create an account through the form; its first token, read off the answer."""
        r = self.post("/admin/accounts", id=account, name=name, quota=quota)
        assert r.status_code == 201, r.text
        return token_on(r)

    def never_showed(self, *tokens: str) -> None:
        """No page but the one answering its creation held the token (nor a cookie, a header)."""
        for token in tokens:
            holding = [r for r in self.seen if token in r.text]
            assert len(holding) == 1, [str(r.url) for r in holding]
            assert holding[0].request.method == "POST" and holding[0].status_code == 201
            for r in self.seen:
                assert all(token not in value for value in r.headers.values()), r.headers


def token_on(page: httpx.Response) -> str:
    found = TOKEN.findall(page.text)
    assert len(set(found)) == 1, found
    assert "will not be shown again" in page.text
    assert page.headers["cache-control"] == "no-store"
    return str(found[0])


def put(server: LiveServer, token: str, path: str, body: bytes = b"hello") -> httpx.Response:
    return httpx.put(f"{server.url}/files/{path}", content=body, timeout=30,
                     headers={"authorization": f"Bearer {token}"})


def flash(page: httpx.Response) -> str:
    match = re.search(r'<p class="flash (\w+)" role="\w+">([^<]*)</p>', page.text)
    assert match, page.text[:2000]
    return f"{match.group(1)}: {match.group(2)}"


def row(page: httpx.Response, account: str) -> str:
    match = re.search(rf'<tr data-account="{account}".*?</tr>', page.text, re.S)
    assert match, page.text[:2000]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(0))).strip()


def test_create_list_and_the_token_shown_once(make_server: Any) -> None:
    server = make_server()
    b = Browser(server)
    empty = b.get("/admin/accounts")
    assert empty.status_code == 200 and "No accounts" in empty.text
    assert empty.headers["cache-control"] == "no-store"
    assert 'href="/admin/accounts" aria-current="page">Accounts</a>' in empty.text

    token = b.create("acme", "Acme Ltd", "10GiB")
    created = b.seen[-1]
    assert "Account acme" in created.text and 'New token "default"' in created.text
    assert "set-cookie" not in created.headers  # not in a flash cookie either
    # The token works, under the account's prefix only.
    assert put(server, token, "acme/a.txt", b"x" * 1000).status_code == 201
    assert put(server, token, "other/a.txt").status_code == 403

    listing = b.get("/admin/accounts")
    assert row(listing, "acme") == "acme Acme Ltd active 10.0 GiB 1 1,000 B 1,000 B 0 B"
    page = b.get("/admin/accounts/acme")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert 'data-usage="files">1<' in page.text
    assert 'data-token="default"' in page.text and "never" in page.text
    assert 'value="10GiB"' in page.text  # the quota as the form takes it back
    assert b.get("/admin/accounts/acme").text.count("will not be shown again") == 0
    b.never_showed(token)


def test_suspend_resume_and_quota(make_server: Any) -> None:
    server = make_server()
    b = Browser(server)
    token = b.create("acme")
    r = b.post("/admin/accounts/acme/state", state="suspended", follow=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/accounts/acme"
    page = b.client.get(r.headers["location"])
    b.seen.append(page)
    assert flash(page).startswith("info: Suspended acme")
    assert 'id="account-state">suspended<' in page.text and "Resume account" in page.text
    assert put(server, token, "acme/a.txt").status_code == 403
    page = b.post("/admin/accounts/acme/state", state="active")
    assert flash(page).startswith("info: Resumed acme") and "Suspend account" in page.text
    assert put(server, token, "acme/a.txt").status_code == 201

    page = b.post("/admin/accounts/acme/edit", name="Acme GmbH", quota="10B")
    assert flash(page) == "info: Saved acme: name &#39;Acme GmbH&#39;, quota 10 B."
    assert server.service.accounts.get("acme").quota == 10
    assert row(b.get("/admin/accounts"), "acme").startswith("acme Acme GmbH active 10 B 1 5 B")
    r = put(server, token, "acme/b.txt", b"y" * 20)
    assert r.status_code == 507 and r.json()["error"] == "quota_exceeded"
    page = b.post("/admin/accounts/acme/edit", name="Acme GmbH", quota="")
    assert flash(page).endswith("quota none.")
    assert server.service.accounts.get("acme").quota == 0
    assert put(server, token, "acme/b.txt", b"y" * 20).status_code == 201
    b.never_showed(token)


def test_add_and_revoke_tokens(make_server: Any) -> None:
    server = make_server()
    b = Browser(server)
    first = b.create("acme")
    r = b.post("/admin/accounts/acme/tokens", name="laptop")
    assert r.status_code == 201 and 'New token "laptop"' in r.text
    second = token_on(r)
    assert second != first
    assert put(server, second, "acme/laptop.txt").status_code == 201
    page = b.get("/admin/accounts/acme")
    assert 'data-token="default"' in page.text and 'data-token="laptop"' in page.text

    r = b.post("/admin/accounts/acme/tokens/revoke", name="default", follow=False)
    assert r.status_code == 303
    page = b.client.get(r.headers["location"])
    b.seen.append(page)
    assert flash(page).startswith("info: Revoked the token &#39;default&#39; of acme")
    assert 'data-token="default"' not in page.text and 'data-token="laptop"' in page.text
    assert put(server, first, "acme/a.txt").status_code == 401
    assert put(server, second, "acme/a.txt").status_code == 201

    # A taken name, a bad name, an unknown token: the account's page again, with the reason.
    taken = b.post("/admin/accounts/acme/tokens", name="laptop")
    assert taken.status_code == 409 and "has a token named &#39;laptop&#39;" in taken.text
    bad = b.post("/admin/accounts/acme/tokens", name="no spaces")
    assert bad.status_code == 400 and "a token name is" in bad.text
    assert 'value="no spaces"' in bad.text  # what was typed, to correct
    gone = b.post("/admin/accounts/acme/tokens/revoke", name="default")
    assert gone.status_code == 404 and "no token named &#39;default&#39;" in gone.text
    for r in (taken, bad, gone):
        assert r.headers["content-type"].startswith("text/html") and 'role="alert"' in r.text
        assert TOKEN.search(r.text) is None
    b.never_showed(first, second)


def test_remove_is_refused_while_the_account_holds_files(make_server: Any) -> None:
    server = make_server()
    b = Browser(server)
    token = b.create("acme")
    assert put(server, token, "acme/a.txt").status_code == 201
    refused = b.post("/admin/accounts/acme/remove")
    assert refused.status_code == 409
    assert "holds 1 files: delete them first" in refused.text and 'role="alert"' in refused.text
    assert server.service.accounts.get("acme").id == "acme"
    deleted = httpx.delete(f"{server.url}/files/acme/a.txt", timeout=30,
                           headers={"authorization": f"Bearer {token}"})
    assert deleted.status_code == 204
    r = b.post("/admin/accounts/acme/remove", follow=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/accounts"
    page = b.client.get("/admin/accounts")
    assert flash(page) == "info: Removed the account acme and its tokens."
    assert 'data-account="acme"' not in page.text
    assert put(server, token, "acme/a.txt").status_code == 401  # its tokens went with it
    missing = b.get("/admin/accounts/acme")
    assert missing.status_code == 404 and "no account &#39;acme&#39;" in missing.text
    b.never_showed(token)


def test_errors_are_4xx_pages_with_the_reason(server: LiveServer, tracebacks: Any) -> None:
    b = Browser(server)
    cases = [
        ("/admin/accounts", {"id": "Bad_Id", "name": "x", "quota": ""}, 400,
         "an account id is 1 to 63 lower-case letters"),
        ("/admin/accounts", {"id": "acme", "name": "", "quota": ""}, 400, "name is 1 to"),
        ("/admin/accounts", {"id": "acme", "name": "Acme", "quota": "ten gigs"}, 400,
         "quota: a size like"),
        ("/admin/accounts/nope/state", {"state": "suspended"}, 404, "no account &#39;nope&#39;"),
        ("/admin/accounts/nope/edit", {"name": "x", "quota": ""}, 404, "no account"),
        ("/admin/accounts/nope/tokens", {"name": "t"}, 404, "no account"),
        ("/admin/accounts/nope/remove", {}, 404, "no account"),
    ]
    for url, fields, status, text in cases:
        r = b.post(url, **fields)
        assert r.status_code == status, (url, fields, r.text[:500])
        tracebacks.settle(r.status_code)
        assert r.headers["content-type"].startswith("text/html"), (url, r.headers)
        assert 'class="flash error" role="alert"' in r.text and text in r.text, (url, r.text)
    # A refused create keeps what was typed.
    r = b.post("/admin/accounts", id="Bad_Id", name="Acme & Co", quota="1GiB")
    assert 'value="Bad_Id"' in r.text and 'value="Acme &amp; Co"' in r.text
    assert 'value="1GiB"' in r.text

    b.create("acme")
    duplicate = b.post("/admin/accounts", id="acme", name="Again", quota="")
    assert duplicate.status_code == 409 and "exists already" in duplicate.text
    for url, fields, status, text in [
        ("/admin/accounts/acme/state", {"state": "deleted"}, 400, "state is one of"),
        ("/admin/accounts/acme/edit", {"name": " ", "quota": ""}, 400, "name is 1 to"),
        ("/admin/accounts/acme/edit", {"name": "Acme", "quota": "-1"}, 400, "quota:"),
        ("/admin/accounts/acme/edit", {"name": "Acme", "quota": "2EiB"}, 400, "quota:"),
    ]:
        r = b.post(url, **fields)
        assert r.status_code == status, (url, fields, r.text[:500])
        assert "Account acme" in r.text and text in r.text, (url, r.text)
    assert b.get("/admin/accounts/nope").status_code == 404
    account = server.service.accounts.get("acme")
    assert (account.name, account.state, account.quota) == ("Acme Ltd", "active", 0)


def test_changes_need_the_csrf_token_and_a_session(make_server: Any) -> None:
    server = make_server()
    b = Browser(server)
    token = b.create("acme")
    posts = [("/admin/accounts", {"id": "other", "name": "Other", "quota": ""}),
             ("/admin/accounts/acme/state", {"state": "suspended"}),
             ("/admin/accounts/acme/edit", {"name": "Changed", "quota": "1B"}),
             ("/admin/accounts/acme/tokens", {"name": "sneaky"}),
             ("/admin/accounts/acme/tokens/revoke", {"name": "default"}),
             ("/admin/accounts/acme/remove", {})]
    for url, fields in posts:
        r = b.post(url, csrf=False, **fields)
        assert r.status_code == 403, (url, r.text)
        assert "CSRF" in r.text
        r = b.client.post(url, data={**fields, "csrf": "wrong"}, headers=FORM)
        assert r.status_code == 403
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    for url, fields in posts:
        r = anonymous.post(url, data=fields, headers=FORM)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next=")
    r = anonymous.get("/admin/accounts/acme")
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Faccounts%2Facme"
    # Nothing changed.
    accounts = server.service.accounts
    assert [a.id for a in accounts.page("", 10)] == ["acme"]
    account = accounts.get("acme")
    assert (account.name, account.state, account.quota) == ("Acme Ltd", "active", 0)
    assert [t.name for t in accounts.tokens("acme")] == ["default"]
    assert put(server, token, "acme/a.txt").status_code == 201


def test_the_list_pages_by_fifty(make_server: Any) -> None:
    server = make_server()
    for n in range(51):
        server.service.accounts.create(f"acct-{n:02}", f"Account {n}")
    b = Browser(server)
    first = b.get("/admin/accounts")
    assert first.text.count("<tr data-account=") == 50
    assert 'data-account="acct-49"' in first.text and 'data-account="acct-50"' not in first.text
    link = re.search(r'<a href="(/admin/accounts\?after=[^"]+)">Next page</a>', first.text)
    assert link and link.group(1) == "/admin/accounts?after=acct-49"
    second = b.get(link.group(1))
    assert second.text.count("<tr data-account=") == 1 and 'data-account="acct-50"' in second.text
    assert "Next page" not in second.text and "First page" in second.text
