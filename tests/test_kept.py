"""Small files kept open between GETs (`kept.py`): never a stale version's bytes or headers. A
PUT, a DELETE, an upload into the cache area, an eviction or an edit behind filestore's back is
seen by the very next GET; HEAD, 304 and Range answer as for any file; idle files are closed."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from typing import Any

import httpx
import pytest
from conftest import LiveServer, uploaded, wait_for

pytestmark = pytest.mark.timeout(60)


def etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()}"'


def gets(client: httpx.Client, path: str, n: int = 4) -> list[httpx.Response]:
    return [client.get(f"/files/{path}") for _ in range(n)]


def test_a_put_or_delete_is_seen_by_the_next_get(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as c:
        for i in range(30):
            body = os.urandom(1000 + i)
            assert c.put("/files/k/a.bin", content=body).status_code in (200, 201)
            for r in gets(c, "k/a.bin"):
                assert r.status_code == 200 and r.content == body
                assert r.headers["etag"] == etag(body)
            head = c.head("/files/k/a.bin")
            assert head.headers["content-length"] == str(len(body)) and head.content == b""
            assert head.headers["etag"] == etag(body)
        assert c.delete("/files/k/a.bin").status_code == 204
        assert c.get("/files/k/a.bin").status_code == 404
        assert c.put("/files/k/a.bin", content=b"again").status_code == 201
        assert c.get("/files/k/a.bin").content == b"again"


def test_conditional_and_range_requests_on_a_kept_file(make_server: Any) -> None:
    server: LiveServer = make_server()
    body = os.urandom(5000)
    with server.client() as c:
        c.put("/files/c.bin", content=body)
        gets(c, "c.bin")
        assert c.get("/files/c.bin", headers={"if-none-match": etag(body)}).status_code == 304
        part = c.get("/files/c.bin", headers={"range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == body[10:20]
        both = c.get("/files/c.bin", headers={"range": "bytes=0-1,-2"})
        assert both.status_code == 206 and body[:2] in both.content and body[-2:] in both.content


def test_a_cached_entry_is_evictable_right_after_gets(make_server: Any) -> None:
    server: LiveServer = make_server(upload__delay="0s")
    body = os.urandom(3000)
    with server.client() as c:
        c.put("/files/u.bin", content=body)
        wait_for(lambda: uploaded(server, "u.bin"))
        wait_for((server.settings.data_dir / "cache" / "u.bin").exists)
        for r in gets(c, "u.bin", 10):
            assert r.content == body
        evicted = c.post("/admin/api/files/u.bin/evict")
        assert evicted.status_code == 200 and evicted.json()["changed"], evicted.text
        assert not (server.settings.data_dir / "cache" / "u.bin").exists()
        again = c.get("/files/u.bin")  # a miss, read through from the remote
        assert again.status_code == 200 and again.content == body


def _held(prefix: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if prefix in target:
            found.append(target)
    return found


def test_deleted_files_are_closed_soon(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as c:
        for i in range(20):
            c.put(f"/files/s/{i}.bin", content=os.urandom(100))
            gets(c, f"s/{i}.bin", 2)
        assert len(_held("/files/s/")) == 20  # kept open between GETs
        for i in range(20):
            c.delete(f"/files/s/{i}.bin")
    wait_for(lambda: not _held("/files/s/"), timeout=10)  # no deleted file's space held long


def test_an_edit_behind_filestores_back_is_seen(make_server: Any) -> None:
    server: LiveServer = make_server()
    with server.client() as c:
        c.put("/files/o.bin", content=b"x" * 100)
        gets(c, "o.bin")
        path = server.settings.data_dir / "files" / "o.bin"
        path.write_bytes(b"y" * 100)  # in place: the same inode and size, another mtime
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        assert c.get("/files/o.bin").content == b"y" * 100  # no stale bytes from memory


def test_reads_racing_replacements_get_whole_versions(make_server: Any) -> None:
    server: LiveServer = make_server()
    bodies = [os.urandom(2000 + i) for i in range(20)]
    versions = {etag(b): b for b in bodies}
    with server.client() as c:
        c.put("/files/race.bin", content=bodies[0])
    stop = time.monotonic() + 2

    def reader() -> int:
        seen = 0
        with server.client() as c:
            while time.monotonic() < stop:
                r = c.get("/files/race.bin")
                if r.status_code == 200:
                    assert versions[r.headers["etag"]] == r.content  # headers match the bytes
                    seen += 1
        return seen

    def writer() -> int:
        written = 0
        with server.client() as c:
            while time.monotonic() < stop:
                written += 1
                c.put("/files/race.bin", content=bodies[written % len(bodies)])
        return written

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(reader) for _ in range(4)] + [pool.submit(writer)]
        counts = [f.result() for f in futures]
    assert all(counts), counts
