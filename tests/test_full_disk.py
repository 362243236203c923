"""A data directory on a small filesystem (a 64 MiB tmpfs): PUTs are refused with 507 before the
disk is full, the cache evicts uploaded bytes to keep room, the registry stays consistent with
the bytes on disk, and reads keep being served. The remote (`file://`) lives on the big disk, as
a cloud would, so only the data directory fills up.

Mounting needs root (as here and in CI); where the machine refuses it, the tests skip and say why.
"""

from __future__ import annotations

import errno
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer, counters, uploaded, wait_for
from test_concurrency import assert_consistent

MiB = 1024 * 1024
DISK_SIZE = 64 * MiB


class SmallDisk:
    """A tmpfs of DISK_SIZE at `root`, and the servers whose data directory is on it (stopped
    before it is unmounted)."""

    def __init__(self, root: Path, remote: Path) -> None:
        self.root = root
        self.remote = remote
        self.data = root / "data"
        self.servers: list[LiveServer] = []

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def server(self, **overrides: str) -> LiveServer:
        overrides.setdefault("remote__url", f"file://{self.remote}")
        server = LiveServer(self.data, **overrides)
        self.servers.append(server)
        return server

    def stop(self, server: LiveServer) -> None:
        server.stop()
        self.servers.remove(server)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(root)],
            capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    disk = SmallDisk(root, tmp_path / "remote")
    try:
        yield disk
    finally:
        for server in disk.servers:
            server.stop()
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], check=True)  # busy: detach it anyway


def fill_with_local_files(client: httpx.Client, rng: random.Random, size: int,
                          prefix: str = "fill") -> dict[str, bytes]:
    """PUT `size`-byte files until the first 507; the files that were accepted."""
    accepted: dict[str, bytes] = {}
    for i in range(DISK_SIZE // size + 2):
        body = rng.randbytes(size)
        r = client.put(f"/files/{prefix}/{i}.bin", content=body)
        if r.status_code == 507:
            assert r.json()["error"] == "insufficient_storage"
            return accepted
        assert r.status_code == 201, r.text
        accepted[f"{prefix}/{i}.bin"] = body
    raise AssertionError("the disk never filled up")


def assert_reads(client: httpx.Client, bodies: dict[str, bytes]) -> None:
    for path, body in bodies.items():
        r = client.get(f"/files/{path}")
        assert r.status_code == 200 and r.content == body, (path, r.status_code)


def test_puts_get_507_before_the_disk_is_full(small_disk):
    floor = 16 * MiB
    server = small_disk.server(upload__enabled="false", storage__min_free="16MiB")
    rng = random.Random(1)
    with server.client() as client:
        accepted = {}
        for i in range(DISK_SIZE // (4 * MiB) + 2):
            body = rng.randbytes(4 * MiB)
            r = client.put(f"/files/f/{i}.bin", content=body)
            if r.status_code == 507:
                break
            assert r.status_code == 201, r.text
            accepted[f"f/{i}.bin"] = body
            assert small_disk.free() >= floor  # the floor holds after every accepted PUT
        assert r.status_code == 507 and r.json()["error"] == "insufficient_storage", r.text
        assert len(accepted) >= (DISK_SIZE - floor) // (4 * MiB) - 2
        free = small_disk.free()
        assert free >= floor

        # A body without Content-Length cannot be refused up front: it is cut when the floor
        # is reached, and the part already received goes again.
        r = client.put("/files/streamed.bin", content=(rng.randbytes(MiB) for _ in range(32)))
        assert r.status_code == 507, r.text
        assert client.get("/files/streamed.bin").status_code == 404
        assert small_disk.free() >= free - MiB  # (the registry may grow by a page or two)

        assert_reads(client, accepted)
        assert_consistent(small_disk.data)

        # Deleting makes room, and PUTs are accepted again.
        assert client.delete("/files/f/0.bin").status_code == 204
        assert client.put("/files/again.bin", content=rng.randbytes(4 * MiB)).status_code == 201
    assert_consistent(small_disk.data)


def test_the_cache_evicts_so_puts_keep_flowing(small_disk):
    """Uploaded bytes move into the cache area; eviction keeps the disk above cache.min_free,
    so PUTs (which stop at the lower storage.min_free) never have to be refused."""
    server = small_disk.server(upload__delay="0s", storage__min_free="8MiB",
                               cache__min_free="24MiB", cache__max_size="1GiB")
    rng = random.Random(2)
    bodies = {}
    with server.client() as client:
        for i in range(20):  # 80 MiB through a 64 MiB disk
            body = rng.randbytes(4 * MiB)
            r = client.put(f"/files/c/{i}.bin", content=body)
            assert r.status_code == 201, (i, r.text, small_disk.free())
            bodies[f"c/{i}.bin"] = body
            wait_for(lambda i=i: uploaded(server, f"c/{i}.bin"))  # type: ignore[misc]
            assert small_disk.free() >= 8 * MiB
        wait_for(lambda: small_disk.free() >= 24 * MiB)
        assert counters(server)["cache.evictions"] >= 5
        # Every file still reads: from the cache, or from the cloud through it.
        assert_reads(client, bodies)
        wait_for(lambda: small_disk.free() >= 24 * MiB)
    wait_for(lambda: not any((small_disk.data / "tmp").iterdir()))
    assert_consistent(small_disk.data)


def test_reads_keep_working_on_a_full_disk(small_disk):
    """Files only the cloud has still read when the disk has no room to cache them: they
    stream straight through, kept nowhere."""
    rng = random.Random(3)
    remote_only = {f"r/{i}.bin": rng.randbytes(4 * MiB) for i in range(3)}
    first = small_disk.server(upload__delay="0s")
    with first.client() as client:
        for path, body in remote_only.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        for path in remote_only:
            wait_for(lambda p=path: uploaded(first, p))  # type: ignore[misc]
            r = client.post(f"/admin/api/files/{path}/evict")
            assert r.status_code == 200, r.text
            assert not (small_disk.data / "cache" / path).exists()
    small_disk.stop(first)

    server = small_disk.server(upload__enabled="false", storage__min_free="8MiB",
                               cache__min_free="8MiB")
    with server.client() as client:
        local = fill_with_local_files(client, rng, 2 * MiB)
        free = small_disk.free()
        before = counters(server)["cache.passthrough"]
        assert_reads(client, remote_only)
        assert_reads(client, local)
        # (statistics reach the registry within a second)
        wait_for(lambda: counters(server)["cache.passthrough"] - before >= len(remote_only))
        assert counters(server)["cache.entries"] == 0
        assert small_disk.free() >= free - MiB
        assert client.get("/healthz").status_code == 200
    assert_consistent(small_disk.data)


def test_a_put_the_cache_can_make_room_for_is_accepted(small_disk):
    server = small_disk.server(upload__delay="0s", storage__min_free="8MiB",
                               cache__min_free="16MiB", cache__max_size="1GiB")
    rng = random.Random(4)
    with server.client() as client:
        for i in range(12):
            assert client.put(f"/files/u/{i}.bin", content=rng.randbytes(4 * MiB)
                              ).status_code == 201
            wait_for(lambda i=i: uploaded(server, f"u/{i}.bin"))  # type: ignore[misc]
        wait_for(lambda: small_disk.free() >= 16 * MiB)
        assert counters(server)["cache.bytes"] >= 32 * MiB  # all evictable
        big = rng.randbytes(20 * MiB)  # needs 28 MiB free; about 16-20 MiB are
        r = client.put("/files/big.bin", content=big)
        assert r.status_code == 201, (r.text, small_disk.free(), counters(server)["cache.bytes"])
        assert client.get("/files/big.bin").content == big


def _fill_disk(root: Path, leave: int) -> Path:
    """Occupy the disk outside the data directory (another program, say) until `leave` bytes
    are free (to the page); again, to take more."""
    filler = root / "filler"
    with open(filler, "ab") as out:
        block = b"\0" * MiB
        while (free := shutil.disk_usage(root).free) > leave:
            try:
                out.write(block[: min(MiB, free - leave)])
                out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def test_a_disk_filled_behind_our_back_is_507_never_500(small_disk):
    server = small_disk.server(upload__enabled="false", storage__min_free="0")
    statuses: list[tuple[str, int]] = []
    with server.client() as client:
        for i in range(3):
            assert client.put(f"/files/keep/{i}.bin", content=b"k" * 10_000).status_code == 201
        filler = _fill_disk(small_disk.root, leave=64 * 1024)
        for size in (60 * 1024, 32 * 1024, 8 * 1024, 1024, 10):
            r = client.put(f"/files/late/{size}.bin", content=b"x" * size)
            statuses.append((f"PUT {size}", r.status_code))
        _fill_disk(small_disk.root, leave=0)  # and the last free pages
        r = client.delete("/files/keep/0.bin")
        statuses.append(("DELETE on a full disk", r.status_code))
        filler.unlink()
        assert_reads(client, {f"keep/{i}.bin": b"k" * 10_000 for i in (1, 2)})
    assert all(status != 500 for _, status in statuses), statuses
    assert_consistent(small_disk.data)


def test_a_declared_length_alone_evicts_nothing(small_disk):
    """A PUT that declares a large Content-Length and sends almost nothing must not empty the
    cache: room is made for bytes that arrive (it used to evict for the declared length before
    any body came, so any writer could force cold reads at will)."""
    import socket

    server = small_disk.server(upload__delay="0s", storage__min_free="8MiB",
                               cache__min_free="16MiB", cache__max_size="1GiB")
    rng = random.Random(5)
    with server.client() as client:
        for i in range(8):
            assert client.put(f"/files/c/{i}.bin", content=rng.randbytes(4 * MiB)
                              ).status_code == 201
            wait_for(lambda i=i: uploaded(server, f"c/{i}.bin"))  # type: ignore[misc]
    wait_for(lambda: counters(server)["cache.bytes"] >= 24 * MiB)
    before = counters(server)
    tmp = small_disk.data / "tmp"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"PUT /files/promise.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + server.token.encode() + b"\r\nContent-Length: " + str(40 * MiB).encode()
                     + b"\r\n\r\n" + b"p" * 1024)
        wait_for(lambda: any(tmp.iterdir()))  # the body is being received
    wait_for(lambda: not any(tmp.iterdir()))  # the client left: its temp file went
    after = counters(server)
    assert after["cache.evictions"] == before["cache.evictions"]
    assert after["cache.bytes"] == before["cache.bytes"]
