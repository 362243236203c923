"""The cache fill's pipeline on its own (cache/fill.py), with a remote in memory: readers take
the bytes from memory as they arrive, without waiting for the storer thread that writes and
hashes them; the last byte waits for the whole file and the SHA-256; a failed write or a
cancelled fill ends the thread before the file's descriptor is closed."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from filestore.cache import fill as fill_module
from filestore.cache.fill import Fill, FillBytes
from filestore.errors import RemoteError, RemoteIntegrityError
from filestore.registry import FileRecord

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CHUNK = 256_000  # what aiohttp hands over from a fast store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class MemoryRemote:
    """A `Readable` serving one body in `CHUNK`s; counts the chunks handed out."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.sent = 0

    def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(0, len(self.body), CHUNK):
                await anyio.sleep(0)
                self.sent += 1
                yield self.body[offset:offset + CHUNK]
        return chunks()


class NoLock:
    def release(self) -> None:
        pass


def new_fill(tmp_path: Path, body: bytes, sha256: str | None = None) -> Fill:
    record = FileRecord(path="f.bin", size=len(body),
                        sha256=sha256 or hashlib.sha256(body).hexdigest(),
                        content_type="application/octet-stream", created=0.0, modified=0.0)
    tmp = tmp_path / "fill-f"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return Fill(record, tmp, fd, NoLock())  # type: ignore[arg-type]


class Gate:
    """Holds the storer's writes until `open()`; `before(fd)` runs first each time. Counts the
    writes still in progress."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 before: Callable[[int], None] | None = None) -> None:
        self.event = threading.Event()
        self.before = before
        self.busy = 0
        self._write = fill_module._write_block
        monkeypatch.setattr(fill_module, "_write_block", self._gated)

    def open(self) -> None:
        self.event.set()

    def _gated(self, fd: int, block: list[bytes]) -> int:
        self.busy += 1
        try:
            assert self.event.wait(30)
            if self.before is not None:
                self.before(fd)
            return self._write(fd, block)
        finally:
            self.busy -= 1


async def read_all(reader: FillBytes, size: int, got: bytearray) -> None:
    while len(got) < size:
        got += await reader.read(MiB, len(got))


async def test_readers_have_the_bytes_before_they_are_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = os.urandom(6 * MiB + 123)
    fill = new_fill(tmp_path, body)
    installed: list[bytes] = []
    gate = Gate(monkeypatch)
    remote = MemoryRemote(body)
    got = bytearray()
    async with anyio.create_task_group() as tg:
        tg.start_soon(fill.run, remote, lambda f: installed.append(f.tmp.read_bytes()), 30.0)
        reader = FillBytes(fill, len(body) - 1)
        tg.start_soon(read_all, reader, len(body), got)
        with anyio.fail_after(10):
            while len(got) < 2 * MiB:
                await anyio.sleep(0.001)
        # Nothing is in the file yet, and the download waits for the storer: memory stays
        # bounded (`_BLOCKS_AHEAD` blocks pending, one waiting to be handed over).
        assert fill.stored == 0 and os.path.getsize(fill.tmp) == 0
        await anyio.sleep(0.05)
        limit = (fill_module._BLOCKS_AHEAD + 2) * (MiB // CHUNK + 1) + 1
        assert remote.sent <= limit
        assert len(got) < len(body)  # the last byte waits for the file and the hash
        gate.open()
    await reader.aclose()
    assert bytes(got) == body and fill.verified and fill.error is None
    assert installed == [body] and gate.busy == 0


async def test_a_failed_write_fails_the_fill_and_its_readers_mid_body(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = os.urandom(3 * MiB)
    fill = new_fill(tmp_path, body)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    gate = Gate(monkeypatch, full)
    gate.open()
    got = bytearray()
    reader = FillBytes(fill, len(body) - 1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill.run, MemoryRemote(body), lambda f: None, 30.0)
            with pytest.raises(RemoteError) as failed:
                await read_all(reader, len(body), got)
    await reader.aclose()
    assert not fill.verified and isinstance(fill.error, RemoteError)
    assert "No space left on device" in fill.error.detail and failed.value is fill.error
    assert len(got) < len(body) and gate.busy == 0


async def test_a_corrupt_download_never_gives_its_last_byte(tmp_path: Path) -> None:
    body = os.urandom(2 * MiB + 7)
    fill = new_fill(tmp_path, body, sha256="0" * 64)
    got = bytearray()
    reader = FillBytes(fill, len(body) - 1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fill.run, MemoryRemote(body), lambda f: None, 30.0)
            with pytest.raises(RemoteIntegrityError):
                await read_all(reader, len(body), got)
    await reader.aclose()
    assert bytes(got) == body[:-1]  # all but the last byte, which never goes out
    assert isinstance(fill.error, RemoteIntegrityError)


@pytest.mark.parametrize("recorded", [1000, 2 * MiB])  # an inline fill, a threaded one
async def test_a_remote_copy_larger_than_recorded_fails_as_soon_as_it_passes_the_size(
        tmp_path: Path, recorded: int) -> None:
    """A store that sends more than the recorded size (the object replaced behind filestore)
    fails the fill once the bytes pass the size, not after writing and hashing all of them
    (a small fill would do that on the event loop's thread)."""
    body = os.urandom(16 * MiB)
    fill = new_fill(tmp_path, body[:recorded])
    remote = MemoryRemote(body)
    with anyio.fail_after(10):
        await fill.run(remote, lambda f: None, 30.0)
    assert isinstance(fill.error, RemoteIntegrityError)
    assert "larger than the recorded" in fill.error.detail
    assert remote.sent * CHUNK <= recorded + CHUNK  # stopped at the chunk that passed it
    assert fill.stored <= recorded


async def test_a_cancelled_fill_waits_for_its_storer_before_closing_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = os.urandom(4 * MiB)
    fill = new_fill(tmp_path, body)
    seen: list[Any] = []

    def still_open(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)  # raises if the fill closed its fd already

    gate = Gate(monkeypatch, still_open)
    ran = anyio.Event()

    async def run() -> None:
        await fill.run(MemoryRemote(body), lambda f: None, 30.0)
        ran.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while gate.busy == 0:  # the storer's thread holds a block (handed over is not yet)
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
            # The fill's task is cancelled, but it holds on until the thread lets go.
            threading.Timer(0.1, gate.open).start()
        assert not ran.is_set()  # cancelled inside run, which still cleaned up
    assert seen and seen[0] == os.stat(fill.tmp).st_ino
    assert isinstance(fill.error, RemoteError) and "stopped" in fill.error.detail
    assert gate.busy == 0
