"""The admin page's accounts in a real browser: Playwright driving Debian's Chromium against a real
uvicorn. Sign in, create an account, read its token off the page, PUT with it, watch the usage,
revoke it, and the next PUT is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest


def put(url: str, token: str, path: str, body: bytes) -> int:
    r = httpx.put(f"{url}/files/{path}", content=body, timeout=30,
                  headers={"authorization": f"Bearer {token}"})
    return r.status_code


@pytest.mark.timeout(120)
def test_an_account_from_creation_to_a_revoked_token(browser: Any, make_server: Any,
                                                     tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = make_server()
    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url + "/admin/accounts")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/admin/accounts")
    expect(page.get_by_role("navigation", name="Sections").get_by_role(
        "link", name="Accounts")).to_have_attribute(
        "aria-current", "page")
    expect(page.get_by_text("No accounts")).to_be_visible()

    # Create one: its page shows the first token, this once.
    page.get_by_label("Account id").fill("acme")
    page.get_by_label("Name").fill("Acme Ltd")
    page.get_by_label("Quota").fill("1MiB")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="New token \"default\"")).to_be_visible()
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    token = page.get_by_label("Token for acme").input_value()
    assert token.startswith("fsa_") and len(token) > 40
    page.screenshot(path=str(tmp_path / "account-created.png"), full_page=True)

    # The token PUTs under the account's prefix; the account's page counts the file.
    assert put(server.url, token, "acme/photos/cat.jpg", b"meow" * 1000) == 201
    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Accounts").click()
    row = page.locator('tr[data-account="acme"]')
    expect(row).to_contain_text("Acme Ltd")
    expect(row).to_contain_text("1.0 MiB")
    expect(row.locator("td").nth(3)).to_have_text("1")
    page.screenshot(path=str(tmp_path / "accounts.png"), full_page=True)
    row.get_by_role("link", name="acme").click()
    expect(page).to_have_url(server.url + "/admin/accounts/acme")
    expect(page.locator('[data-usage="files"]')).to_have_text("1")
    expect(page.locator('[data-usage="bytes"]')).to_have_text("3.9 KiB of 1.0 MiB")
    expect(page.locator('tr[data-token="default"]')).to_be_visible()
    assert token not in page.content()  # shown once: on no later page
    page.screenshot(path=str(tmp_path / "account.png"), full_page=True)

    # Revoke it: the next PUT with it is refused.
    page.get_by_role("button", name="Revoke token default").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked the token 'default' of acme")
    expect(page.locator('tr[data-token="default"]')).to_have_count(0)
    assert put(server.url, token, "acme/photos/dog.jpg", b"woof") == 401
    assert token not in page.content()

    # Usable on a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    for url in ("/admin/accounts", "/admin/accounts/acme"):
        page.goto(server.url + url)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), url
    page.close()
