"""The admin page in a real browser: Playwright driving Debian's Chromium against a real uvicorn,
with moto's real S3 server as the cloud. Sign in, read the statistics, fail and pass the settings
test, move everything to the cloud and back, watching the live progress."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import counters, wait_for

ARTIFACTS = Path(os.environ.get("FILESTORE_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))



def objects(moto: Any, bucket: str) -> list[str]:
    listing = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listing)


@pytest.mark.timeout(180)
def test_operator_session(browser: Any, make_server: Any, moto: Any, bucket: str) -> None:
    from playwright.sync_api import expect

    server = make_server(upload__delay="10m")
    client = server.client()
    bodies = {f"media/{i:02}.jpg": os.urandom(20_000 + i) for i in range(8)}
    for path, body in bodies.items():
        assert client.put(f"/files/{path}", content=body).status_code == 201
    total = sum(map(len, bodies.values()))

    page = browser.new_page()
    page.set_default_timeout(20_000)
    # Signing in: the page asks first, and a wrong token is refused.
    page.goto(server.url + "/admin")
    expect(page).to_have_url(server.url + "/admin/login?next=%2Fadmin")
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the API token")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/admin")

    # The statistics are what the test uploaded, and stay so as the script refreshes them.
    expect(page.locator('[data-stat="files.count"]')).to_have_text("8")
    expect(page.locator('[data-stat="files.local.count"]')).to_have_text("8")
    expect(page.locator('[data-stat="queue.upload.waiting"]')).to_have_text("8")
    expect(page.locator('[data-stat="files.remote.count"]')).to_have_text("0")
    expect(page.locator("#updated")).to_contain_text("Updated")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-statistics.png"), full_page=True)

    # Bad settings: the failing step is named and nothing changes.
    page.get_by_role("link", name="Cloud settings").click()
    page.get_by_label("Remote URL").fill("s3://no-such-bucket-anywhere/fs")
    page.get_by_label("Endpoint").fill(moto.url)
    page.get_by_label("Region").fill("us-east-1")
    page.get_by_label("Access key").fill("test")
    page.get_by_label("Secret key").fill("test")
    page.get_by_role("button", name="Test and save").click()
    expect(page.locator("#probe-result")).to_contain_text("the put step failed")
    expect(page.locator("#probe-result")).to_contain_text("NoSuchBucket")
    assert server.store.settings.remote.url == ""
    assert client.get("/admin/api/settings").json()["remote"]["url"]["saved"] is False

    # Good settings (moto's bucket) pass all four steps and are saved.
    page.get_by_label("Remote URL").fill(f"s3://{bucket}/fs")
    page.get_by_label("Secret key").fill("test")
    page.get_by_role("button", name="Test and save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_label("Remote URL")).to_have_value(f"s3://{bucket}/fs")
    assert "test" not in page.get_by_label("Secret key").input_value()

    # Move everything to the cloud: the live progress reaches 100% while files land in S3.
    page.get_by_role("link", name="Statistics", exact=True).click()
    page.get_by_role("button", name="Move everything to the cloud").click()
    expect(page.get_by_role("status")).to_contain_text("move-to-cloud")
    expect(page.locator('[data-job-field="state"]')).to_have_text("done", timeout=60_000)
    expect(page.locator('[data-job-field="percent"]')).to_have_text("100%")
    expect(page.locator('[data-job-field="done"]')).to_have_text("8")
    assert objects(moto, bucket) == sorted(f"fs/{p}" for p in bodies)
    expect(page.locator('[data-stat="files.remote.count"]')).to_have_text("8")
    expect(page.locator('[data-stat="uploads.bytes"]')).not_to_have_text("0 B")
    # The storage plan's table counts what the default remote holds, live too.
    expect(page.locator('[data-stat="plan.remotes.default.files"]')).to_have_text("8")
    expect(page.locator('tr[data-remote="default"] code')).to_have_text(
        f"s3://{bucket}/fs at {moto.url}")

    # The files view shows where each file is now.
    page.get_by_role("link", name="Files", exact=True).click()
    page.get_by_label("Path prefix").fill("media/")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tr[data-path]")).to_have_count(8)
    expect(page.locator('tr[data-state="cached"]')).to_have_count(8)
    page.get_by_role("button", name="Evict from cache: media/00.jpg").click()
    expect(page.get_by_role("status")).to_contain_text("evicted")
    expect(page.locator('tr[data-path="media/00.jpg"]')).to_have_attribute("data-state", "cloud")

    # And back: every file local again, verified, the cloud copies deleted as asked.
    page.get_by_role("link", name="Statistics", exact=True).click()
    page.get_by_label("and delete the cloud copies").check()
    page.get_by_role("button", name="Move everything to local").click()
    expect(page.locator('[data-job-field="kind"]')).to_have_text("move-to-local")
    expect(page.locator('[data-job-field="state"]')).to_have_text("done", timeout=60_000)
    expect(page.locator('[data-job-field="percent"]')).to_have_text("100%")
    expect(page.locator('[data-stat="files.local.count"]')).to_have_text("8")
    wait_for(lambda: objects(moto, bucket) == [], timeout=20)
    assert counters(server)["bytes.local"] == total
    for path, body in bodies.items():
        assert (server.settings.data_dir / "files" / path).read_bytes() == body

    # Usable on a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()
