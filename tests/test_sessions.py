"""Admin sessions kept in the registry: signing out ends a session in every worker process (a
copied cookie stops working), "sign out everywhere" ends them all, `admin.cookie_secure` forces
the Secure flag, and X-Forwarded-Proto counts only as uvicorn's proxy headers take it."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, ServeProcess, registry_db, wait_for

from filestore.admin.session import COOKIE


def sign_in(url: str, token: str, **kwargs: Any) -> tuple[httpx.Client, str]:
    """A browser-like client with a session cookie, and the page's CSRF token."""
    browser = httpx.Client(base_url=url, timeout=30, **kwargs)
    reply = browser.post("/admin/login", data={"token": token, "next": "/admin"})
    assert reply.status_code == 303, reply.text
    page = browser.get("/admin")
    assert page.status_code == 200
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, page.text[:500]
    return browser, match.group(1)


def copy_of(browser: httpx.Client, **kwargs: Any) -> httpx.Client:
    """Another client holding the same cookie (as if it had been copied out of the browser)."""
    return httpx.Client(base_url=str(browser.base_url), timeout=30,
                        cookies={COOKIE: browser.cookies[COOKIE]}, **kwargs)


def test_sign_out_ends_the_session_not_only_the_cookie(make_server: Any) -> None:
    server: LiveServer = make_server()
    browser, csrf = sign_in(server.url, server.token)
    other, _ = sign_in(server.url, server.token)
    copied = copy_of(browser)
    assert copied.get("/admin/api/stats").status_code == 200
    assert browser.post("/admin/logout", data={"csrf": "wrong"}).status_code == 403
    assert copied.get("/admin/api/stats").status_code == 200  # a refused sign-out ends nothing
    assert browser.post("/admin/logout", data={"csrf": csrf}).status_code == 303
    assert copied.get("/admin/api/stats").status_code == 401
    assert copied.get("/admin").status_code == 303
    assert other.get("/admin/api/stats").status_code == 200  # another browser's session stays


def test_sign_out_everywhere_ends_every_session(make_server: Any) -> None:
    server: LiveServer = make_server()
    first, csrf = sign_in(server.url, server.token)
    second, second_csrf = sign_in(server.url, server.token)
    copied = copy_of(second)
    page = first.get("/admin").text
    assert 'action="/admin/logout/everywhere"' in page and "Sign out everywhere" in page
    assert first.post("/admin/logout/everywhere", data={"x": "1"}).status_code == 403  # CSRF
    assert first.post("/admin/logout/everywhere", data={"csrf": second_csrf}).status_code == 403
    assert copied.get("/admin/api/stats").status_code == 200
    reply = first.post("/admin/logout/everywhere", data={"csrf": csrf})
    assert reply.status_code == 303 and reply.headers["location"] == "/admin/login"
    assert "2 session(s) ended" in first.get("/admin/login").text
    for client in (first, second, copied):
        assert client.get("/admin/api/stats").status_code == 401
    again, _ = sign_in(server.url, server.token)  # signing in works as before
    assert again.get("/admin/api/stats").status_code == 200
    # The JSON API does the same for a script, with the token (or the session and its CSRF).
    assert again.post("/admin/api/sessions/end-all").status_code == 403
    with server.client() as owner:
        reply = owner.post("/admin/api/sessions/end-all")
        assert reply.status_code == 200 and reply.json() == {"ended": 1}
        assert owner.get("/admin/api/stats").status_code == 200  # the token is no session
    assert again.get("/admin/api/stats").status_code == 401


def test_ended_and_expired_sessions_are_forgotten(make_server: Any) -> None:
    server: LiveServer = make_server()
    browser, _ = sign_in(server.url, server.token)
    with contextlib.closing(registry_db(server)) as conn, conn:
        (count,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
        assert count == 1
        # Its row says it expired (the cookie's own signature is still good for 12 hours).
        conn.execute("UPDATE sessions SET expires = 1")
    assert browser.get("/admin/api/stats").status_code == 401
    sign_in(server.url, server.token)
    sign_in(server.url, server.token)
    with contextlib.closing(registry_db(server)) as conn:
        rows = conn.execute("SELECT expires FROM sessions").fetchall()
    assert len(rows) == 2 and all(row["expires"] > 1 for row in rows)  # the expired one pruned


def test_the_secure_flag(make_server: Any) -> None:
    def flag(server: LiveServer, headers: dict[str, str], local: str | None = None) -> bool:
        transport = httpx.HTTPTransport(local_address=local) if local else None
        with httpx.Client(base_url=server.url, timeout=30, headers=headers,
                          transport=transport) as browser:
            reply = browser.post("/admin/login", data={"token": server.token})
            assert reply.status_code == 303, reply.text
            cookie = reply.headers["set-cookie"].lower()
            for part in ("httponly", "samesite=strict", "path=/admin"):
                assert part in cookie
            return "; secure" in cookie

    https = {"x-forwarded-proto": "https"}
    plain = make_server()
    assert flag(plain, {}) is False  # plain http
    # From 127.0.0.1, which uvicorn trusts by default (forwarded_allow_ips): taken.
    assert flag(plain, https) is True
    # From 127.0.0.2, another loopback address it does not trust: ignored.
    assert flag(plain, https, local="127.0.0.2") is False
    forced = make_server(plain.settings.data_dir.parent / "forced", admin__cookie_secure="true")
    assert flag(forced, {}) is True
    assert flag(forced, https, local="127.0.0.2") is True


@pytest.mark.slow  # two worker processes take ~5-10 s to start on this 2-core machine
def test_sign_out_reaches_every_worker_process(tmp_path: Path) -> None:
    proc = ServeProcess(tmp_path / "data", server__workers="2")
    proc.start()
    try:
        browser, csrf = sign_in(proc.url, proc.token)
        metrics_dir = proc.data_dir / "metrics"
        # A new connection each (no keep-alive): the kernel spreads them over the workers.
        copied = copy_of(browser, limits=httpx.Limits(max_keepalive_connections=0))

        def both_workers_accept_it() -> bool:
            for _ in range(10):
                assert copied.get("/admin/api/stats").status_code == 200
            writers = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
            return len(writers) >= 2

        wait_for(both_workers_accept_it, timeout=30, interval=0.1)
        assert browser.post("/admin/logout", data={"csrf": csrf}).status_code == 303
        # Within a second, in every worker (in fact at once: each request reads the registry).
        wait_for(lambda: copied.get("/admin/api/stats").status_code == 401, timeout=1)
        assert [copied.get("/admin/api/stats").status_code for _ in range(20)] == [401] * 20
    finally:
        _, out = proc.stop()
    assert "Traceback" not in out, out
