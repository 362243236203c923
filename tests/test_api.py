"""The file API end to end against a real uvicorn server: round trips, listing, auth, checksums."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 64 * 1024 * 1024])
def test_put_get_roundtrip(client, size):
    body = os.urandom(size)
    digest = hashlib.sha256(body).hexdigest()
    r = client.put("/files/round/trip.bin", content=body)
    assert r.status_code == 201
    assert r.json() == {"path": "round/trip.bin", "size": size, "sha256": digest}
    assert r.headers["etag"] == f'"{digest}"'

    with client.stream("GET", "/files/round/trip.bin") as r:
        assert r.status_code == 200
        got = hashlib.sha256()
        for chunk in r.iter_bytes():
            got.update(chunk)
    assert got.hexdigest() == digest
    assert r.headers["content-length"] == str(size)
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert "last-modified" in r.headers


def test_head_has_headers_and_no_body(client):
    client.put("/files/h.txt", content=b"12345")
    r = client.head("/files/h.txt")
    assert r.status_code == 200
    assert r.headers["content-length"] == "5"
    assert r.content == b""


def test_replace_answers_200_and_serves_new_bytes(client):
    assert client.put("/files/r.txt", content=b"old").status_code == 201
    r = client.put("/files/r.txt", content=b"newer")
    assert r.status_code == 200
    assert client.get("/files/r.txt").content == b"newer"


def test_content_type_stored_or_guessed(client):
    client.put("/files/a.json", content=b"{}")
    assert client.get("/files/a.json").headers["content-type"] == "application/json"
    client.put("/files/b.dat", content=b"x", headers={"content-type": "image/png"})
    assert client.get("/files/b.dat").headers["content-type"] == "image/png"
    client.put("/files/noext", content=b"x", headers={"content-type": ""})
    assert client.get("/files/noext").headers["content-type"] == "application/octet-stream"
    assert client.get("/files/b.dat").headers["x-content-type-options"] == "nosniff"


def test_get_missing_is_404_json(client):
    r = client.get("/files/nope.txt")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_delete(client, server):
    client.put("/files/d/e/f.txt", content=b"bye")
    assert client.delete("/files/d/e/f.txt").status_code == 204
    assert client.get("/files/d/e/f.txt").status_code == 404
    assert client.delete("/files/d/e/f.txt").status_code == 404
    # the emptied directories went with the file
    assert list((server.settings.data_dir / "files").iterdir()) == []


def test_sha256_header_verified(client):
    body = b"checked"
    good = hashlib.sha256(body).hexdigest()
    assert client.put("/files/s.txt", content=body,
                      headers={"x-checksum-sha256": good.upper()}).status_code == 201
    r = client.put("/files/t.txt", content=body, headers={"x-checksum-sha256": "0" * 64})
    assert r.status_code == 400 and r.json()["error"] == "checksum_mismatch"
    assert client.get("/files/t.txt").status_code == 404
    r = client.put("/files/t.txt", content=body, headers={"x-checksum-sha256": "xyz"})
    assert r.status_code == 400


def test_content_md5_verified(client, server):
    body = b"md5 checked"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    assert client.put("/files/m.txt", content=body,
                      headers={"content-md5": good}).status_code == 201
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = client.put("/files/m2.txt", content=body, headers={"content-md5": bad})
    assert r.status_code == 400 and r.json()["error"] == "checksum_mismatch"
    assert client.put("/files/m2.txt", content=body,
                      headers={"content-md5": "not base64!"}).status_code == 400
    assert client.get("/files/m2.txt").status_code == 404
    assert list((server.settings.data_dir / "tmp").iterdir()) == []


def test_too_large_by_content_length_and_by_stream(make_server):
    server = make_server(storage__max_upload_size="1KiB")
    with server.client() as client:
        r = client.put("/files/big", content=b"x" * 2048)
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks():
            for _ in range(4):
                yield b"y" * 512

        r = client.put("/files/big", content=chunks())  # chunked: no Content-Length
        assert r.status_code == 413
        assert client.get("/files/big").status_code == 404
        assert client.put("/files/ok", content=b"z" * 1024).status_code == 201
    assert list((server.settings.data_dir / "tmp").iterdir()) == []


def test_insufficient_storage_before_writing(make_server):
    server = make_server(storage__min_free="1000TiB")
    with server.client() as client:
        r = client.put("/files/full", content=b"x")
        assert r.status_code == 507 and r.json()["error"] == "insufficient_storage"
        assert client.get("/files/full").status_code == 404


def test_file_and_directory_conflict_is_409(client):
    assert client.put("/files/a", content=b"file").status_code == 201
    r = client.put("/files/a/b", content=b"below a file")
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    assert client.put("/files/c/d", content=b"x").status_code == 201
    assert client.put("/files/c", content=b"over a directory").status_code == 409
    assert client.get("/files/a").content == b"file"


def test_listing_with_prefix_limit_and_cursor(client):
    names = [f"list/{i:03d}.txt" for i in range(25)] + ["other/x.txt", "listing.txt"]
    for name in names:
        client.put(f"/files/{name}", content=name.encode())
    seen, after = [], ""
    while True:
        r = client.get("/files/", params={"prefix": "list/", "limit": 10, "after": after})
        assert r.status_code == 200
        page = r.json()
        seen += [item["path"] for item in page["items"]]
        assert len(page["items"]) <= 10
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted(n for n in names if n.startswith("list/"))
    item = client.get("/files/", params={"prefix": "list/000"}).json()["items"][0]
    assert item["size"] == len(b"list/000.txt") and item["location"] == "local"
    assert client.get("/files/", params={"limit": 0}).status_code == 400
    assert client.get("/files/", params={"limit": "ten"}).status_code == 400
    assert client.get("/files/", params={"prefix": "../"}).status_code == 400


def test_auth_required_for_writes_and_listing(server):
    with server.client(auth=False) as anon:
        r = anon.put("/files/x", content=b"x")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert anon.delete("/files/x").status_code == 401
        assert anon.get("/files/").status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert anon.put("/files/x", content=b"x", headers=bad).status_code == 401
        assert anon.put("/files/x", content=b"x",
                        headers={"authorization": "Basic abc"}).status_code == 401
    with server.client() as client:
        assert client.put("/files/x", content=b"x").status_code == 201
    with server.client(auth=False) as anon:
        assert anon.get("/files/x").content == b"x"  # reads are public by default


def test_private_reads(make_server):
    server = make_server(auth__public_read="false")
    with server.client() as client:
        client.put("/files/p", content=b"secret")
        assert client.get("/files/p").content == b"secret"
    with server.client(auth=False) as anon:
        assert anon.get("/files/p").status_code == 401
        assert anon.head("/files/p").status_code == 401


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.post("/files/x", content=b"x")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_bad_content_length_is_400(server):
    from conftest import raw_request

    status, _ = raw_request(server, "/files/x", "PUT",
                            {"authorization": f"Bearer {server.token}", "content-length": "abc"})
    assert status == 400


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
