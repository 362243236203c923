"""Reading files whose bytes are only in the cloud: streamed through the cache, once."""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TracebackWatch, raw_request, s3_overrides, uploaded, wait_for
from faults import FaultProxy


def evict(server: Any, path: str) -> Path:
    """Drop the cached bytes of an uploaded file, as an operator would: the next GET reads
    the cloud. The path the bytes had in the cache area."""
    with server.client() as client:
        r = client.post(f"/admin/api/files/{path}/evict")
    assert r.status_code == 200 and r.json()["changed"], r.text
    return server.settings.data_dir / "cache" / path


def uploaded_server(make_server: Any, path: str, body: bytes, **overrides: str) -> Any:
    server = make_server(upload__delay="0s", **overrides)
    with server.client() as client:
        assert client.put(f"/files/{path}", content=body).status_code == 201
    wait_for(lambda: uploaded(server, path))
    return server


def test_a_cold_get_streams_from_the_cloud_and_fills_the_cache(make_server):
    body = os.urandom(3 * 1024 * 1024 + 5)
    server = uploaded_server(make_server, "cold/a.bin", body)
    cached = evict(server, "cold/a.bin")
    with server.client() as client:
        r = client.get("/files/cold/a.bin")
        assert r.status_code == 200 and r.content == body
        assert r.headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
        wait_for(cached.exists)
        assert cached.read_bytes() == body
        assert client.get("/files/cold/a.bin").content == body  # now a local hit
    # The fill's temp name and lock go just after the install: nothing stays behind.
    wait_for(lambda: list((server.settings.data_dir / "tmp").iterdir()) == [])


def test_a_range_of_a_cold_file(make_server):
    body = os.urandom(2 * 1024 * 1024)
    server = uploaded_server(make_server, "r.bin", body)
    evict(server, "r.bin")
    with server.client() as client:
        r = client.get("/files/r.bin", headers={"range": "bytes=1048570-1048580"})
        assert r.status_code == 206 and r.content == body[1048570:1048581]
        r = client.get("/files/r.bin", headers={"range": "bytes=0-9,-10"})
        assert r.status_code == 206 and body[:10] in r.content and body[-10:] in r.content


def test_head_of_a_cold_file_downloads_nothing(make_server):
    server = uploaded_server(make_server, "h.bin", b"x" * 1000)
    cached = evict(server, "h.bin")
    with server.client() as client:
        r = client.head("/files/h.bin")
    assert r.status_code == 200 and r.headers["content-length"] == "1000"
    assert not cached.exists() and list((server.settings.data_dir / "tmp").iterdir()) == []


def test_concurrent_cold_gets_share_one_download(make_server, moto, bucket):
    proxy = FaultProxy(moto.port, latency=0.3)  # slow enough that all requests overlap it
    try:
        body = os.urandom(16 * 1024 * 1024)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = uploaded_server(make_server, "shared.bin", body, **overrides)
        evict(server, "shared.bin")
        before = proxy.connections

        def get(_: int) -> bytes:
            with server.client() as client:
                return client.get("/files/shared.bin").content

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            bodies = list(pool.map(get, range(32)))
        assert len(bodies) == 32 and all(b == body for b in bodies)
        assert proxy.connections - before == 1  # one remote GET for 32 clients
    finally:
        proxy.close()


def test_a_corrupt_remote_copy_is_never_served_as_a_clean_200(make_server):
    body = os.urandom(1024 * 1024 + 10)
    server = uploaded_server(make_server, "bad.bin", body)
    cached = evict(server, "bad.bin")
    remote_copy = server.settings.data_dir / "remote" / "bad.bin"
    flipped = bytearray(body)
    flipped[-1] ^= 0xFF  # the very last byte differs: only the hash can tell
    remote_copy.write_bytes(bytes(flipped))
    watch = TracebackWatch()  # after the server started: it sets up uvicorn's loggers
    logging.getLogger("uvicorn").addHandler(watch)
    try:
        with server.client() as client:
            for _ in range(2):  # and the next GET tries again, with the same result
                with pytest.raises(httpx.RemoteProtocolError):
                    client.get("/files/bad.bin")
    finally:
        logging.getLogger("uvicorn").removeHandler(watch)
    assert not cached.exists()
    # Cut off as a known failure (the fill said why), not as a bug: no traceback in the log.
    assert watch.seen == 0


def test_a_missing_remote_object_is_404(make_server):
    server = uploaded_server(make_server, "lost.bin", b"x" * 100)
    evict(server, "lost.bin")
    (server.settings.data_dir / "remote" / "lost.bin").unlink()
    with server.client() as client:
        r = client.get("/files/lost.bin")
    assert r.status_code == 404 and r.json()["error"] == "remote_not_found"


def test_an_unreachable_cloud_is_503_with_retry_after(make_server, moto, bucket):
    proxy = FaultProxy(moto.port)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = uploaded_server(make_server, "far.bin", b"y" * 5000, **overrides)
        evict(server, "far.bin")
        proxy.down()
        with server.client() as client:
            r = client.get("/files/far.bin")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json()["error"] == "remote_unavailable"
            proxy.up()
            assert client.get("/files/far.bin").content == b"y" * 5000
    finally:
        proxy.close()


def test_the_first_bytes_go_out_before_the_download_ends(make_server, moto, bucket):
    """With a slow store, a cold GET's client reads the start of the body while the fill is
    still running: ordering, not timing."""
    proxy = FaultProxy(moto.port, rate=2 * 1024 * 1024)  # 4 MiB take about two seconds
    try:
        body = os.urandom(4 * 1024 * 1024)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = uploaded_server(make_server, "slow.bin", body, **overrides)
        cached = evict(server, "slow.bin")
        with server.client() as client, client.stream("GET", "/files/slow.bin") as r:
            chunks = r.iter_raw()
            first = next(chunks)
            assert not cached.exists()  # the first bytes arrived while the fill still ran
            rest = b"".join(chunks)
        assert first + rest == body
        wait_for(cached.exists)
    finally:
        proxy.close()


def test_a_client_that_leaves_does_not_stop_the_fill(make_server, moto, bucket):
    proxy = FaultProxy(moto.port, rate=2 * 1024 * 1024)
    try:
        body = os.urandom(3 * 1024 * 1024)
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = uploaded_server(make_server, "left.bin", body, **overrides)
        cached = evict(server, "left.bin")
        with server.client() as client, client.stream("GET", "/files/left.bin") as r:
            next(r.iter_raw())  # read a little, then hang up
        assert not cached.exists()
        wait_for(cached.exists, timeout=20)  # the download went on without its client
        assert cached.read_bytes() == body
    finally:
        proxy.close()


def test_evict_on_request_makes_the_next_get_read_the_cloud(make_server):
    body = os.urandom(200_000)
    server = uploaded_server(make_server, "ev/a.bin", body)
    cached = server.settings.data_dir / "cache" / "ev" / "a.bin"
    assert cached.exists()
    with server.client() as client:
        r = client.post("/admin/api/files/ev/a.bin/evict")
        assert r.status_code == 200 and r.json()["path"] == "ev/a.bin"
        assert r.json()["changed"] is True
        assert not cached.exists()
        assert client.post("/admin/api/files/ev/a.bin/evict").json()["changed"] is False
        assert client.get("/files/ev/a.bin").content == body  # read through from the cloud
        wait_for(cached.exists)


def test_evict_refuses_what_the_cloud_does_not_hold_yet(make_server):
    server = make_server(upload__delay="1h")
    with server.client() as client:
        client.put("/files/only-here.txt", content=b"x")
        r = client.post("/admin/api/files/only-here.txt/evict")
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        assert client.post("/admin/api/files/nope.txt/evict").status_code == 404
        status, _ = raw_request(server, "/admin/api/files/a/%2e%2e/b/evict", "POST",
                                {"authorization": f"Bearer {server.token}"})
        assert status == 400
        assert client.get("/files/only-here.txt").content == b"x"
    with server.client(auth=False) as anon:
        assert anon.post("/admin/api/files/only-here.txt/evict").status_code == 401
