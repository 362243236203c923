"""`file://` remotes and the admin page: the config file may name any directory, the page and its
API only directories inside `storage.allowed_file_roots` (resolved: symlinks, "..", relative
forms), else `s3://` remotes only. Real servers, real directories, real symlinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import uploaded, wait_for
from test_admin import sign_in

RULE = "the admin page sets s3:// remotes only"
SLOW = {"upload__delay": "10m"}


def put_settings(server: Any, changes: dict[str, Any]) -> Any:
    with server.client() as client:
        return client.put("/admin/api/settings", json=changes)


def refused(server: Any, url: str, section: str = "remote") -> str:
    """PUT `url` as the remote's URL: a 400 naming the rule, nothing saved; its detail."""
    r = put_settings(server, {section: {"url": url}})
    assert r.status_code == 400, (url, r.status_code, r.text)
    assert r.json()["error"] == "bad_request"
    detail: str = r.json()["detail"]
    assert detail.startswith(f"{section}.url: {RULE}"), detail
    assert "storage.allowed_file_roots" in detail
    with server.client() as client:
        assert client.get("/admin/api/settings").json()["remote"]["url"]["saved"] is False
    return detail


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def test_the_api_sets_no_file_remote_without_allowed_roots(make_server: Any,
                                                           tmp_path: Path) -> None:
    configured = tmp_path / "configured"
    server = make_server(tmp_path / "data", upload__delay="0s", remote__url=f"file://{configured}")
    target = tmp_path / "x"
    detail = refused(server, f"file://{target}")
    assert "(none are set)" in detail
    for url in ("file:///tmp/x", "file://./x", "file://../x", "http://example.com/x",
                "ftp://example.com/x", "bucket/prefix"):
        refused(server, url)
    assert not target.exists()  # nothing was tested, so nothing written there
    assert server.store.settings.remote.url == f"file://{configured}"
    # The URL in effect, sent back unchanged with other changes, is no new remote; an s3://
    # remote is tested as before.
    assert put_settings(server, {"remote": {"url": f"file://{configured}"},
                                 "upload": {"delay": "0s"}}).status_code == 200
    r = put_settings(server, {"remote": {"url": "s3://no-such-bucket-here/x",
                                         "endpoint_url": "http://127.0.0.1:9"}})
    assert r.status_code == 422 and r.json()["step"] == "put", r.text

    # The config file (here its environment) may name any directory, and it works.
    with server.client() as client:
        assert client.put("/files/a.txt", content=b"from the config").status_code == 201
    wait_for(lambda: uploaded(server, "a.txt"))
    assert (configured / "a.txt").read_bytes() == b"from the config"


def test_a_file_remote_inside_an_allowed_root_only(make_server: Any, tmp_path: Path) -> None:
    root, outside, data = tmp_path / "cold", tmp_path / "outside", tmp_path / "data"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    # The root itself named through a symlink: compared once resolved too.
    (tmp_path / "cold-link").symlink_to(root, target_is_directory=True)
    server = make_server(data, upload__delay="0s",
                         storage__allowed_file_roots=f"{tmp_path / 'cold-link'}:/nonexistent")

    detail = refused(server, f"file://{root}/escape")
    assert f"{root}/escape resolves to {outside.resolve()}, outside them" in detail
    refused(server, f"file://{root}/escape/deeper")
    refused(server, f"file://{root}/inner/../../outside")
    refused(server, f"file://{outside}")
    refused(server, f"file://{tmp_path}")  # holds the root: not inside it
    assert files_in(outside) == []

    r = put_settings(server, {"remote": {"url": f"file://{root}/inner/../remote"}})
    assert r.status_code == 200, r.text
    assert r.json()["tested"] is True
    with server.client() as client:
        assert client.put("/files/b.txt", content=b"inside the root").status_code == 201
    wait_for(lambda: uploaded(server, "b.txt"))
    assert (root / "remote" / "b.txt").read_bytes() == b"inside the root"
    assert files_in(outside) == []


def test_a_data_directory_overlap_inside_an_allowed_root_still_fails_its_test(
        make_server: Any, tmp_path: Path) -> None:
    """Inside the allowed roots, the other checks still hold: a directory remote must keep out
    of the data directory's own trees (its test fails at "connect"). And outside them, the
    rule comes first: nothing is tested."""
    data = tmp_path / "data"
    server = make_server(data, storage__allowed_file_roots=str(data), **SLOW)
    for url in (f"file://{data}/files", f"file://{data}"):
        r = put_settings(server, {"remote": {"url": url}})
        assert r.status_code == 422 and r.json()["step"] == "connect", (url, r.text)
    refused(server, f"file://{tmp_path}")
    # A folder of its own there is fine; and an empty URL (the embedded default) always is.
    assert put_settings(server, {"remote": {"url": f"file://{data}/own"}}).status_code == 200
    assert put_settings(server, {"remote": {"url": ""}}).status_code == 200
    assert server.store.settings.remote.url == ""


def test_the_settings_form_shows_the_rule(make_server: Any, tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", **SLOW)
    browser, csrf = sign_in(server)
    target = tmp_path / "x"
    r = browser.post("/admin/settings", data={"csrf": csrf, "remote.url": f"file://{target}"})
    assert r.status_code == 400
    assert f"Not saved: remote.url: {RULE}" in r.text and "storage.allowed_file_roots" in r.text
    assert not target.exists()
    with server.client() as client:
        assert client.get("/admin/api/settings").json()["remote"]["url"]["saved"] is False
