"""An account's storage on the admin page (`/admin/accounts/ID`), through its forms against a real
uvicorn and moto: a remote saved only once its test passes (the failing step shown otherwise),
its secret never on a page, rules added in order and removed, removal refused while the remote
holds files; and the same in headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Moto, s3_overrides, uploaded, wait_for
from test_admin_accounts import FORM, Browser, flash, put

from filestore.accounts import ADMIN


def remote_form(moto: Moto, bucket: str, **changes: str) -> dict[str, str]:
    return {"name": "own", "url": f"s3://{bucket}/acme-own", "endpoint_url": moto.url,
            "region": "us-east-1", "access_key_id": "test", "secret_access_key": "test",
            **changes}


def send(b: Browser, target: str, fields: dict[str, str]) -> Any:
    """Post a form whose fields include `url` (which `Browser.post` takes for the target)."""
    r = b.client.post(target, data={"csrf": b.csrf, **fields}, follow_redirects=True,
                      headers=FORM)
    b.seen += [*r.history, r]
    return r


def test_a_remote_and_rules_through_the_page(make_server: Any, moto: Moto, bucket: str) -> None:
    server = make_server(**s3_overrides(moto, bucket), upload__delay="0")
    b = Browser(server)
    token = b.create("acme")
    page = b.get("/admin/accounts/acme")
    assert 'id="no-remotes"' in page.text and 'id="no-rules"' in page.text

    # A failed test saves nothing and says which step failed; the secret is not sent back.
    failed = send(b, "/admin/accounts/acme/storage/remote",
                  remote_form(moto, bucket, url="s3://no-such-bucket-here/x"))
    assert failed.status_code == 422 and "the test failed at put" in failed.text
    assert 'id="no-remotes"' in failed.text
    assert 'value="s3://no-such-bucket-here/x"' in failed.text  # the form keeps what was typed

    saved = send(b, "/admin/accounts/acme/storage/remote", remote_form(moto, bucket))
    assert saved.status_code == 200, saved.text
    assert flash(saved).startswith("info: Saved the remote &#39;own&#39; (tested: put, read")
    assert 'data-remote="own"' in saved.text and "(secret set)" in saved.text

    page = b.post("/admin/accounts/acme/storage/rule", prefix="rec/", content_type="audio/*",
                  remote="own", upload_delay="", keep_local="")
    assert flash(page) == "info: Added the rule."
    page = b.post("/admin/accounts/acme/storage/rule", prefix="tmp/", content_type="",
                  remote="(stay local)", upload_delay="", keep_local="")
    assert 'data-rule="2"' in page.text and "upload = false" in page.text
    assert server.service.account_storage(ADMIN, "acme")["plan"] == [
        {"prefix": "rec/", "content_type": "audio/*", "remote": "own"},
        {"prefix": "tmp/", "upload": False}]
    bad = b.post("/admin/accounts/acme/storage/rule", prefix="/abs", content_type="",
                 remote="own", upload_delay="soon", keep_local="")
    assert bad.status_code == 400 and "upload_delay" in bad.text

    # A file under the rule goes to the account's remote; then the remote cannot go.
    assert put(server, token, "acme/rec/a.wav", b"RIFF").status_code == 201
    wait_for(lambda: uploaded(server, "acme/rec/a.wav"))
    objects = moto.client().list_objects_v2(Bucket=bucket, Prefix="acme-own/")["Contents"]
    assert [o["Key"] for o in objects] == ["acme-own/acme/rec/a.wav"]
    refused = b.post("/admin/accounts/acme/storage/remote/remove", name="own")
    assert refused.status_code == 400 and "plan[1].remote" in refused.text  # a rule names it
    page = b.post("/admin/accounts/acme/storage/rule/remove", number="1")
    assert flash(page) == "info: Removed rule 1." and 'data-rule="2"' not in page.text
    refused = b.post("/admin/accounts/acme/storage/remote/remove", name="own")
    assert refused.status_code == 409 and "1 files in the cloud" in refused.text
    # The secret field is empty on every page, the failed save's included.
    forms = [r for r in b.seen if 'name="secret_access_key"' in r.text]
    assert forms and all('name="secret_access_key" type="password" value=""' in r.text
                         for r in forms)


@pytest.mark.timeout(120)
def test_a_remote_saved_in_the_browser(browser: Any, make_server: Any, moto: Moto, bucket: str,
                                       tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server = make_server(**s3_overrides(moto, bucket))
    server.service.accounts.create("acme", "Acme")
    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url + "/admin/accounts/acme")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/admin/accounts/acme")
    form = remote_form(moto, bucket)
    page.locator("#remote-name").fill(form["name"])
    page.get_by_label("URL", exact=True).fill("s3://no-such-bucket-here/x")
    page.get_by_label("Endpoint URL").fill(form["endpoint_url"])
    page.get_by_label("Region").fill(form["region"])
    page.get_by_label("Access key id").fill(form["access_key_id"])
    page.get_by_label("Secret access key").fill("typed-secret-xyz")
    page.get_by_role("button", name="Save and test").click()
    expect(page.get_by_role("alert")).to_contain_text("the test failed at put")
    assert "typed-secret-xyz" not in page.content()  # not sent back, not even on a refusal
    page.get_by_label("URL", exact=True).fill(form["url"])
    page.get_by_label("Secret access key").fill(form["secret_access_key"])
    page.get_by_role("button", name="Save and test").click()
    expect(page.get_by_role("status")).to_contain_text("Saved the remote 'own'")
    row = page.locator('tr[data-remote="own"]')
    expect(row).to_contain_text(f"s3://{bucket}/acme-own")
    expect(row).to_contain_text("(secret set)")
    page.get_by_label("Path prefix").fill("rec/")
    page.get_by_label("Goes to").select_option("own")
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator('li[data-rule="1"]')).to_contain_text('prefix = "rec/"')
    page.screenshot(path=str(tmp_path / "account-storage.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()


def test_s3_keys_through_the_page(make_server: Any) -> None:
    import re

    server = make_server(s3=True)
    b = Browser(server)
    b.create("acme")
    page = b.get("/admin/accounts/acme")
    assert 'id="no-s3-keys"' in page.text
    made = b.post("/admin/accounts/acme/s3-keys")
    assert made.status_code == 201
    secret = re.search(r'id="new-s3-secret" readonly value="([^"]+)"', made.text)
    key_id = re.search(r'id="new-s3-key-id" readonly value="([^"]+)"', made.text)
    assert secret and key_id
    assert server.service.s3_keys.lookup(key_id.group(1)) == ("acme", secret.group(1))
    later = b.get("/admin/accounts/acme")
    assert f'data-s3-key="{key_id.group(1)}"' in later.text and secret.group(1) not in later.text
    revoked = b.post("/admin/accounts/acme/s3-keys/revoke", key=key_id.group(1))
    assert flash(revoked).startswith(f"info: Revoked the S3 key {key_id.group(1)}")
    assert server.service.s3_keys.lookup(key_id.group(1)) is None
    assert sum(secret.group(1) in r.text for r in b.seen) == 1  # shown once
