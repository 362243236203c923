"""The admin page's server side: sign-in, sessions and CSRF, the JSON API, settings tested on save,
and the move jobs, against a real uvicorn and (for the cloud) moto's real S3 server."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, counters, file_row, queue_row, s3_overrides, wait_for
from faults import FaultProxy

SLOW_COOL_DOWN = {"upload__delay": "10m"}


def sign_in(server: LiveServer) -> tuple[httpx.Client, str]:
    """A browser-like client with a session cookie, and the page's CSRF token."""
    browser = httpx.Client(base_url=server.url, timeout=30)
    r = browser.post("/admin/login", data={"token": server.token, "next": "/admin"})
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    page = browser.get("/admin")
    assert page.status_code == 200
    match = re.search(r'data-csrf="([^"]+)"', page.text)
    assert match, page.text[:500]
    return browser, match.group(1)


def put(client: httpx.Client, path: str, body: bytes) -> None:
    r = client.put(f"/files/{path}", content=body)
    assert r.status_code in (200, 201), r.text


def s3_objects(moto: Any, bucket: str) -> dict[str, bytes]:
    s3 = moto.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def job_state(client: httpx.Client, job_id: int) -> dict[str, Any]:
    r = client.get(f"/admin/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_job(client: httpx.Client, job_id: int, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (lambda j: j if j["state"] not in ("queued", "running") else None)(
        job_state(client, job_id)), timeout=timeout)


# -- sign-in, sessions, CSRF ---------------------------------------------------------------------

class TestAuth:
    def test_without_credentials_pages_redirect_and_api_refuses(self, make_server: Any) -> None:
        server = make_server()
        anon = httpx.Client(base_url=server.url, timeout=10)
        r = anon.get("/admin/files?prefix=a")
        assert r.status_code == 303
        assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Ffiles%3Fprefix%3Da"
        for method, url in [("GET", "/admin/api/stats"), ("GET", "/admin/api/settings"),
                            ("POST", "/admin/api/jobs"), ("GET", "/admin/api/jobs/1"),
                            ("POST", "/admin/api/files/a.txt/evict"),
                            ("PUT", "/admin/api/settings")]:
            r = anon.request(method, url)
            assert r.status_code == 401, (method, url, r.text)
            assert r.json()["error"] == "unauthorized"
        assert anon.get("/admin/api/stats", headers={"authorization": "Bearer nope"}
                        ).status_code == 401

    def test_sign_in_sets_a_strict_http_only_session(self, make_server: Any) -> None:
        server = make_server()
        anon = httpx.Client(base_url=server.url, timeout=10)
        wrong = anon.post("/admin/login", data={"token": "wrong", "next": "/admin"})
        assert wrong.status_code == 401 and "not the API token" in wrong.text
        assert "set-cookie" not in wrong.headers
        r = anon.post("/admin/login", data={"token": server.token, "next": "https://evil.test/"})
        assert r.status_code == 303 and r.headers["location"] == "/admin"  # no open redirect
        cookie = r.headers["set-cookie"].lower()
        for part in ("httponly", "samesite=strict", "path=/admin", "max-age=43200"):
            assert part in cookie, cookie
        assert anon.get("/admin/api/stats").status_code == 200

    def test_a_tampered_or_foreign_cookie_is_no_session(self, make_server: Any,
                                                        tmp_path: Path) -> None:
        server = make_server()
        browser, _ = sign_in(server)
        value = browser.cookies["filestore_admin"]
        forged = httpx.Client(base_url=server.url, timeout=10,
                              cookies={"filestore_admin": value[:-2] + "xx"})
        assert forged.get("/admin/api/stats").status_code == 401
        # A session signed for another data directory's token is worth nothing here.
        other = make_server(tmp_path / "other")
        assert other.token != server.token
        foreign = httpx.Client(base_url=other.url, timeout=10,
                               cookies={"filestore_admin": value})
        assert foreign.get("/admin").status_code == 303

    def test_changes_need_the_csrf_token_with_a_session(self, make_server: Any) -> None:
        server = make_server(**SLOW_COOL_DOWN)
        put(server.client(), "c.txt", b"x")
        browser, csrf = sign_in(server)
        r = browser.post("/admin/api/files/c.txt/upload")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = browser.post("/admin/api/files/c.txt/upload", headers={"x-csrf-token": "bad"})
        assert r.status_code == 403
        assert queue_row(server, "c.txt")["not_before"] > time.time() + 60  # unchanged
        form = browser.post("/admin/files/action", data={"path": "c.txt", "action": "upload",
                                                         "csrf": "bad"})
        assert form.status_code == 403
        r = browser.post("/admin/api/files/c.txt/upload", headers={"x-csrf-token": csrf})
        assert r.status_code == 200 and r.json()["changed"] is True
        # A bearer token needs none: no browser sends it unasked.
        assert server.client().get("/admin/api/files/c.txt").status_code == 200

    def test_sign_out_ends_the_session(self, make_server: Any) -> None:
        server = make_server()
        browser, csrf = sign_in(server)
        assert browser.post("/admin/logout", data={"csrf": csrf}).status_code == 303
        assert browser.get("/admin").status_code == 303


# -- statistics and files ------------------------------------------------------------------------

def test_statistics_count_what_was_uploaded(make_server: Any) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    client = server.client()
    for i in range(3):
        put(client, f"s/{i}.bin", b"x" * 1000 * (i + 1))
    stats = client.get("/admin/api/stats").json()
    assert stats["files"]["count"] == 3 and stats["files"]["bytes"] == 6000
    assert stats["files"]["local"] == {"count": 3, "bytes": 6000}
    upload = stats["queue"]["upload"]
    assert (upload["pending"], upload["due"], upload["waiting"], upload["in_flight"]) == \
        (3, 0, 3, 0)
    assert stats["job"] is None and stats["recent_errors"] == []
    browser, _ = sign_in(server)
    page = browser.get("/admin").text
    assert 'data-stat="files.count" data-format="count">3<' in page
    assert "5.9 KiB" in page  # 6,000 bytes


def test_file_states_and_actions(make_server: Any) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    client = server.client()
    put(client, "f/a.txt", b"alpha")
    info = client.get("/admin/api/files/f/a.txt").json()
    assert info["state"] == "queued"
    assert re.fullmatch(r"queued: uploads in (9m \d+s|10m)", info["label"])
    assert info["actions"] == ["upload", "delete"]
    assert client.post("/admin/api/files/f/a.txt/upload").json()["changed"] is True
    # Uploaded is recorded first; the bytes move into the cache area right after.
    info = wait_for(lambda: (lambda i: i if i["state"] == "cached" else None)(
        client.get("/admin/api/files/f/a.txt").json()))
    assert info["actions"] == ["local", "evict", "delete"]
    assert client.post("/admin/api/files/f/a.txt/evict").json()["changed"] is True
    assert client.get("/admin/api/files/f/a.txt").json()["state"] == "cloud"
    r = client.post("/admin/api/files/f/a.txt/local")
    assert r.status_code == 200 and r.json()["changed"] is True
    row = file_row(server, "f/a.txt")
    assert row["location"] == "local"
    assert (server.settings.data_dir / "files/f/a.txt").read_bytes() == b"alpha"
    info = client.get("/admin/api/files/f/a.txt").json()
    assert info["state"] == "local" and info["queue"] is None  # stays local: no upload queued
    assert client.post("/admin/api/files/f/a.txt/retry").status_code == 409
    assert client.post("/admin/api/files/f/a.txt/bogus").status_code == 404
    assert client.post("/admin/api/files/nope.txt/upload").status_code == 404
    assert client.post("/admin/api/files/f/..%2fx/upload").status_code in (400, 404)
    assert client.post("/admin/api/files/f/a.txt/delete").status_code == 200
    assert client.get("/files/f/a.txt").status_code == 404


def test_files_view_lists_states_and_acts_by_form(make_server: Any) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    client = server.client()
    for name in ("v/one.txt", "v/two.txt", "w/other.txt"):
        put(client, name, name.encode())
    browser, csrf = sign_in(server)
    page = browser.get("/admin/files", params={"prefix": "v/"}).text
    assert 'data-path="v/one.txt" data-state="queued"' in page
    assert "w/other.txt" not in page
    r = browser.post("/admin/files/action", data={
        "csrf": csrf, "path": "v/two.txt", "action": "delete", "back": "/admin/files?prefix=v/"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/files?prefix=v/"
    page = browser.get(r.headers["location"]).text
    assert "v/two.txt deleted" in page and 'data-path="v/two.txt"' not in page
    assert browser.get("/admin/files", params={"prefix": "../x"}).status_code == 400


def test_failed_uploads_list_retry_and_drop(make_server: Any, moto: Any) -> None:
    # A bucket that does not exist: every upload fails for good at once.
    overrides = s3_overrides(moto, "no-such-bucket-here")
    server = make_server(upload__delay="0s", upload__max_attempts="1", **overrides)
    client = server.client()
    put(client, "bad/1.txt", b"1")
    put(client, "bad/2.txt", b"2")
    wait_for(lambda: counters(server)["queue.upload.failed"] == 2)
    failed = client.get("/admin/api/queue/failed").json()
    assert [i["path"] for i in failed["items"]] == ["bad/1.txt", "bad/2.txt"]
    assert "NoSuchBucket" in failed["items"][0]["error"]
    stats = client.get("/admin/api/stats").json()
    assert {e["path"] for e in stats["recent_errors"]} == {"bad/1.txt", "bad/2.txt"}
    browser, csrf = sign_in(server)
    assert 'data-path="bad/1.txt"' in browser.get("/admin/failed").text
    r = browser.post("/admin/failed/drop", data={"csrf": csrf, "path": "bad/2.txt"})
    assert r.status_code == 303 and queue_row(server, "bad/2.txt") is None
    assert client.post("/admin/api/queue/retry", json={"all": True}).json() == {"retried": 1}
    wait_for(lambda: counters(server)["queue.upload.failed"] == 1)  # failed again, for good
    assert client.post("/admin/api/queue/retry", json={}).status_code == 400
    assert client.post("/admin/api/queue/drop", json={"path": "bad/1.txt"}).json() == \
        {"dropped": True}


# -- cloud settings, tested on save --------------------------------------------------------------

def test_settings_are_tested_before_they_are_saved(make_server: Any, moto: Any,
                                                   bucket: str) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    client = server.client()
    before = client.get("/admin/api/settings").json()
    assert before["remote"]["url"] == {"saved": False, "value": ""}
    assert before["remote"]["secret_access_key"] == {"saved": False, "set": False}

    good = {"url": f"s3://{bucket}/page", "endpoint_url": moto.url, "region": "us-east-1",
            "access_key_id": "test", "secret_access_key": "test-secret"}
    bad = {**good, "url": "s3://no-such-bucket-for-probe/x"}
    r = client.put("/admin/api/settings", json={"remote": bad})
    assert r.status_code == 422, r.text
    assert r.json()["step"] == "put" and "NoSuchBucket" in r.json()["detail"]
    assert client.get("/admin/api/settings").json() == before  # nothing changed

    r = client.put("/admin/api/settings", json={"remote": {**good, "endpoint_url":
                                                           "http://127.0.0.1:9"}})
    assert r.status_code == 422 and r.json()["step"] == "put"

    r = client.put("/admin/api/settings", json={"upload": {"delay": "soon"}})
    assert r.status_code == 400 and "upload.delay" in r.json()["detail"]
    r = client.put("/admin/api/settings", json={"cache": {"max_size": "1GiB"}})
    assert r.status_code == 400

    r = client.put("/admin/api/settings", json={"remote": good, "upload": {"delay": "0s"}})
    assert r.status_code == 200, r.text
    assert "secret" not in r.text.replace("secret_access_key", "")  # never sent back
    saved = client.get("/admin/api/settings").json()
    assert saved["remote"]["url"] == {"saved": True, "value": f"s3://{bucket}/page"}
    assert saved["remote"]["secret_access_key"] == {"saved": True, "set": True}
    assert saved["upload"]["delay"] == {"saved": True, "value": "0s"}
    assert s3_objects(moto, bucket) == {}  # the probe cleaned up after itself

    # The new settings apply at once: a new file goes to the new bucket with no cool-down.
    put(client, "after.txt", b"after")
    wait_for(lambda: "page/after.txt" in s3_objects(moto, bucket))
    # An empty secret keeps the stored one.
    r = client.put("/admin/api/settings", json={"remote": {"secret_access_key": "",
                                                           "region": "us-east-1"}})
    assert r.status_code == 200
    # Files are in this bucket now: pointing the remote elsewhere would orphan them.
    r = client.put("/admin/api/settings", json={"remote": {"url": "s3://elsewhere/x"}})
    assert r.status_code == 409 and "move everything to local first" in r.json()["detail"]


def test_saved_settings_survive_a_restart_and_override_the_config(
        make_server: Any, moto: Any, bucket: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = make_server(data, **SLOW_COOL_DOWN)
    r = server.client().put("/admin/api/settings", json={"remote": {
        "url": f"s3://{bucket}/r", "endpoint_url": moto.url, "region": "us-east-1",
        "access_key_id": "test", "secret_access_key": "test"}, "upload": {"keep_local": True}})
    assert r.status_code == 200, r.text
    server.stop()
    again = make_server(data, **SLOW_COOL_DOWN)
    assert again.store.settings.remote.url == f"s3://{bucket}/r"
    assert again.store.settings.upload.keep_local is True
    assert again.store.settings.upload.delay == 600  # from the config, not saved
    browser, _ = sign_in(again)
    page = browser.get("/admin/settings").text
    assert page.count("saved here</span>") == 1 + 6  # the legend; five remote keys, keep_local
    assert 'value="test"' not in page.split('name="remote.secret_access_key"')[1][:200]


def test_the_settings_form_names_the_failing_step(make_server: Any) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    browser, csrf = sign_in(server)
    r = browser.post("/admin/settings", data={
        "csrf": csrf, "remote.url": "s3://bucket/x", "remote.endpoint_url": "http://127.0.0.1:9",
        "remote.region": "us-east-1", "remote.access_key_id": "a",
        "remote.secret_access_key": "b", "upload.enabled": "true", "upload.keep_local": "false",
        "upload.delay": "10m", "upload.delete_delay": "0s"})
    assert r.status_code == 422
    assert "the put step failed" in r.text and "Nothing was changed" in r.text
    assert server.client().get("/admin/api/settings").json()["remote"]["url"]["saved"] is False
    r = browser.post("/admin/settings", data={"csrf": csrf, "upload.delay": "whenever"})
    assert r.status_code == 400 and "upload.delay" in r.text


# -- move jobs -----------------------------------------------------------------------------------

def test_move_to_cloud_and_back(make_server: Any, moto: Any, bucket: str) -> None:
    server = make_server(**SLOW_COOL_DOWN, **s3_overrides(moto, bucket))
    client = server.client()
    bodies = {f"m/{i}.bin": os.urandom(1000 + i) for i in range(12)}
    for path, body in bodies.items():
        put(client, path, body)
    r = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"})
    assert r.status_code == 201, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done" and job["errors"] == 0
    assert (job["done"], job["total"]) == (12, 12)
    assert job["bytes"] == job["total_bytes"] == sum(map(len, bodies.values()))
    assert job["progress"] == 1.0
    assert s3_objects(moto, bucket) == {f"fs/{p}": b for p, b in bodies.items()}
    assert counters(server)["files.remote"] == 12

    # Half are evicted from the cache: those come back by download, the rest by rename.
    for path in list(bodies)[:6]:
        assert client.post(f"/admin/api/files/{path}/evict").status_code == 200
    r = client.post("/admin/api/jobs", json={"kind": "move-to-local", "delete_remote": True})
    assert r.status_code == 201, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done" and (job["done"], job["errors"]) == (12, 0)
    assert job["progress"] == 1.0
    stats = counters(server)
    assert stats["files.local"] == 12 and stats["cache.entries"] == 0
    for path, body in bodies.items():
        assert (server.settings.data_dir / "files" / path).read_bytes() == body
        assert client.get(f"/files/{path}").content == body
    wait_for(lambda: s3_objects(moto, bucket) == {})  # deleted after the local copies
    wait_for(lambda: all(file_row(server, p)["remote"] is None for p in bodies))
    assert all(queue_row(server, p) is None for p in bodies)  # local, and staying local


def test_one_move_at_a_time_and_bad_requests(make_server: Any) -> None:
    server = make_server(**SLOW_COOL_DOWN)
    client = server.client()
    assert client.post("/admin/api/jobs", json={"kind": "tidy-up"}).status_code == 409
    assert client.post("/admin/api/jobs", json={"kind": 1}).status_code == 400
    assert client.post("/admin/api/jobs", content=b"{").status_code == 400
    assert client.get("/admin/api/jobs/x").status_code == 400
    assert client.get("/admin/api/jobs/999").status_code == 404
    done = wait_job(client, client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}
                                        ).json()["id"])
    assert done["state"] == "done" and done["total"] == 0 and done["progress"] == 1.0
    assert client.post(f"/admin/api/jobs/{done['id']}/cancel").status_code == 409


def test_move_to_local_refuses_when_it_cannot_fit(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = make_server(data, upload__delay="0s")
    put(server.client(), "big.bin", b"b" * 10_000)
    wait_for(lambda: counters(server)["cache.entries"] == 1)  # uploaded, moved to the cache
    assert server.client().post("/admin/api/files/big.bin/evict").status_code == 200
    server.stop()
    # A floor above the disk's free space: the 10 kB the cloud alone holds cannot fit.
    tight = make_server(data, storage__min_free="1000TiB")
    r = tight.client().post("/admin/api/jobs", json={"kind": "move-to-local"})
    assert r.status_code == 507, r.text
    assert "needs 9.8 KiB" in r.json()["detail"] and "storage.min_free" in r.json()["detail"]
    assert tight.client().get("/admin/api/jobs").json()["items"] == []


def test_a_cancelled_move_to_cloud_gives_back_the_cool_down(make_server: Any, moto: Any,
                                                            bucket: str) -> None:
    proxy = FaultProxy(moto.port, rate=64 * 1024)  # a slow store: 4 s per 256 KiB upload
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__concurrency="1", **SLOW_COOL_DOWN, **overrides)
        client = server.client()
        for i in range(4):
            put(client, f"c/{i}.bin", os.urandom(256 * 1024))
        due_before = {p: queue_row(server, p)["not_before"] for p in
                      (f"c/{i}.bin" for i in range(4))}
        job_id = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}).json()["id"]
        wait_for(lambda: job_state(client, job_id)["total"] == 4)
        wait_for(lambda: counters(server)["uploads.done"] >= 1 or any(
            (queue_row(server, p) or {"leased_until": None})["leased_until"]
            for p in due_before), timeout=30)
        r = client.post(f"/admin/api/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        # Rows not started have their cool-down back; the one in flight finishes.
        waiting = [p for p in due_before if (row := queue_row(server, p)) is not None
                   and not row["leased_until"]]
        assert waiting
        for path in waiting:
            row = queue_row(server, path)
            assert row["not_before"] == due_before[path] and row["job"] is None
    finally:
        proxy.close()


def test_a_running_job_survives_a_restart(make_server: Any, tmp_path: Path, moto: Any,
                                          bucket: str) -> None:
    data = tmp_path / "data"
    proxy = FaultProxy(moto.port, rate=128 * 1024)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(data, upload__concurrency="1", **SLOW_COOL_DOWN, **overrides)
        client = server.client()
        bodies = {f"r/{i}.bin": os.urandom(128 * 1024) for i in range(4)}
        for path, body in bodies.items():
            put(client, path, body)
        job_id = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}).json()["id"]
        wait_for(lambda: job_state(client, job_id)["total"] == 4)
        server.stop()  # mid-job
        proxy.rate = 0
        again = make_server(data, **SLOW_COOL_DOWN, **overrides)
        job = wait_job(again.client(), job_id, timeout=60)
        assert job["state"] == "done" and job["done"] == 4 and job["errors"] == 0
        stored = s3_objects(moto, bucket)
        assert {k: hashlib.sha256(v).hexdigest() for k, v in stored.items()} == {
            f"fs/{p}": hashlib.sha256(b).hexdigest() for p, b in bodies.items()}
    finally:
        proxy.close()


@pytest.mark.parametrize("path", ["/admin/static/admin.css", "/admin/static/admin.js"])
def test_static_assets_are_served_without_a_session(make_server: Any, path: str) -> None:
    server = make_server()
    r = httpx.get(server.url + path, timeout=10)
    assert r.status_code == 200 and len(r.content) > 500


def test_settings_that_cannot_work_fail_their_test_not_the_server(make_server: Any,
                                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    # file:// remotes may be saved inside this root (elsewhere: 400, see test_file_roots.py).
    server = make_server(data, **SLOW_COOL_DOWN, storage__allowed_file_roots=str(tmp_path))
    client = server.client()
    for bad in ({"url": "s3://[x/p"}, {"url": "s3://b/p", "endpoint_url": "notaurl"},
                {"url": "s3://b/p", "region": "bad region!"},
                # A directory remote inside the data directory would "upload" a file onto
                # itself and then hand its only copy to the cache.
                {"url": f"file://{data}/files"}, {"url": f"file://{data}"},
                {"url": f"file://{tmp_path}"}):
        r = client.put("/admin/api/settings", json={"remote": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["step"] == "connect", (bad, r.json())
    assert client.get("/admin/api/settings").json()["remote"]["url"]["saved"] is False
    outside = tmp_path / "cold"
    r = client.put("/admin/api/settings", json={"remote": {"url": f"file://{outside}"}})
    assert r.status_code == 200, r.text
    assert not [p for p in outside.rglob("*") if p.is_file()]  # the probe object went again


def test_upload_settings_are_saved_while_the_store_is_down(make_server: Any, moto: Any,
                                                          bucket: str) -> None:
    proxy = FaultProxy(moto.port)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(**SLOW_COOL_DOWN, **overrides)
        proxy.down()
        r = server.client().put("/admin/api/settings", json={"upload": {"enabled": False}})
        assert r.status_code == 200, r.text  # pausing uploads needs no test of the store
        assert server.store.settings.upload.enabled is False
    finally:
        proxy.close()


def test_hostile_admin_requests_get_4xx(make_server: Any) -> None:
    server = make_server()
    client = server.client()
    assert client.put("/admin/api/settings", content=b"[" * 100_000).status_code == 400
    assert client.put("/admin/api/settings", content=b"{" + b" " * 70_000 + b"}"
                      ).status_code == 400
    assert client.put("/admin/api/settings", json=[1]).status_code == 400
    assert client.put("/admin/api/settings", json={"remote": "x"}).status_code == 400
    assert client.put("/admin/api/settings", json={"remote": {"url": ["x"]}}).status_code == 400
    assert client.get("/admin/api/queue/failed?limit=0").status_code == 400
    assert client.post("/admin/api/jobs/99999999999999999999999/cancel").status_code == 400
    browser, csrf = sign_in(server)
    r = browser.post("/admin/jobs/99999999999999999999999/cancel", data={"csrf": csrf})
    assert r.status_code == 303  # back to the page, with the message
    assert "whole number" in browser.get("/admin").text
    assert browser.post("/admin/settings", content=b"x" * 70_000, headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert browser.post("/admin/settings", json={"csrf": csrf}).status_code == 400
    assert browser.post("/admin/failed/explode", data={"csrf": csrf}).status_code == 303


def test_a_move_to_cloud_waits_while_uploads_are_disabled(make_server: Any, moto: Any,
                                                          bucket: str) -> None:
    proxy = FaultProxy(moto.port, rate=64 * 1024)  # slow: the job is still running below
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__concurrency="1", **SLOW_COOL_DOWN, **overrides)
        client = server.client()
        for i in range(3):
            put(client, f"p/{i}.bin", os.urandom(128 * 1024))
        job_id = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}).json()["id"]
        r = client.put("/admin/api/settings", json={"upload": {"enabled": False}})
        assert r.status_code == 200, r.text
        paused = wait_for(lambda: (lambda j: j if "uploads are disabled" in (j["last_error"] or "")
                                   else None)(job_state(client, job_id)), timeout=30)
        assert paused["state"] == "running" and paused["done"] < 3
        proxy.rate = 0
        r = client.put("/admin/api/settings", json={"upload": {"enabled": True}})
        assert r.status_code == 200, r.text
        done = wait_job(client, job_id)
        assert done["state"] == "done" and done["done"] == 3 and done["errors"] == 0
    finally:
        proxy.close()


def test_cancel_brings_back_a_remote_delete_the_move_replaced(make_server: Any, moto: Any,
                                                              bucket: str) -> None:
    proxy = FaultProxy(moto.port)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__retry_base="30s", **SLOW_COOL_DOWN, **overrides)
        client = server.client()
        put(client, "d.bin", b"d" * 1000)
        assert client.post("/admin/api/files/d.bin/upload").status_code == 200
        wait_for(lambda: counters(server)["cache.entries"] == 1)
        proxy.down()  # the cloud copy's delete cannot happen: it stays queued
        job = client.post("/admin/api/jobs", json={"kind": "move-to-local",
                                                   "delete_remote": True}).json()
        assert wait_job(client, job["id"])["done"] == 1
        wait_for(lambda: (queue_row(server, "d.bin") or {"attempts": 0})["attempts"] >= 1)
        assert queue_row(server, "d.bin")["op"] == "delete"
        # A move back to the cloud replaces the delete with an upload (which fails too)...
        up = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}).json()
        wait_for(lambda: (lambda r: r["op"] == "upload" and r["attempts"] >= 1
                          and not r["leased_until"])(queue_row(server, "d.bin")))
        # ...and cancelling it gives the delete back, due when it was.
        assert client.post(f"/admin/api/jobs/{up['id']}/cancel").status_code == 200
        row = queue_row(server, "d.bin")
        assert row["op"] == "delete" and row["job"] is None
    finally:
        proxy.close()
