"""One download of one remote object into a file that readers follow while it grows.

The fill writes to a temp file (1 MiB blocks, write and SHA-256 in one thread call each),
announcing progress after every block; readers (`FillBytes`) read what is written and wait for
the rest. The object's last byte is released only once the whole body's SHA-256 matched the
registry, so a corrupt download never ends cleanly: its readers fail mid-body instead. A verified
fill is installed into the cache area by its `install` callback; a failed one is deleted.

Everything here runs on the event loop's thread, except the blocks handed to a worker thread;
`written`, `verified` and `error` change only on the loop, so readers check them without locks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import FilestoreError, RemoteError, RemoteIntegrityError, RemoteUnavailable
from ..registry import FileRecord
from ..remote import Remote
from ..responses import CHUNK_SIZE, pread

log = logging.getLogger("filestore.cache")

# Blocks the download may run ahead of the writer: overlap, with memory bounded to a few MiB.
_BLOCKS_AHEAD = 2


class Fill:
    def __init__(self, record: FileRecord, tmp: Path, fd: int) -> None:
        self.record = record
        self.tmp = tmp
        self._fd = fd  # the fill's own write fd; readers open their own
        self.written = 0
        self.verified = False
        self.error: FilestoreError | None = None
        self._progress = anyio.Event()

    @property
    def finished(self) -> bool:
        return self.verified or self.error is not None

    async def changed(self) -> None:
        """Until the next block lands, or the fill ends (check state first, then wait)."""
        await self._progress.wait()

    def _announce(self) -> None:
        event, self._progress = self._progress, anyio.Event()
        event.set()

    async def run(self, remote: Remote, install: Callable[[Fill], None], stall: float) -> None:
        """Download, verify, install. Never raises: the outcome is in `verified` / `error`.

        Downloading and writing overlap: the download hands 1 MiB blocks to a writer task
        through a channel of `_BLOCKS_AHEAD` blocks (so memory stays bounded), and the writer
        writes and hashes each in one thread call while the next block arrives."""
        digest = hashlib.sha256()
        try:
            send, receive = anyio.create_memory_object_stream[bytes](_BLOCKS_AHEAD)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, receive, digest)
                async with send:
                    await self._download(remote, send, stall)
            if self.written != self.record.size or digest.hexdigest() != self.record.sha256:
                raise RemoteIntegrityError(
                    f"the remote copy of {self.record.path!r} is not the recorded file "
                    f"({self.written} bytes, sha256 {digest.hexdigest()}; recorded "
                    f"{self.record.size} bytes, {self.record.sha256})"
                )
            # The body is verified: readers may have their last bytes now. Making the entry
            # durable and installing it only decides whether it is kept.
            self.verified = True
            self._announce()
            await anyio.to_thread.run_sync(os.fsync, self._fd)
            await anyio.to_thread.run_sync(install, self)
        except Exception as exc:
            if not self.verified:
                error = exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc
                self.error = error if isinstance(error, FilestoreError) else RemoteError(
                    f"the download of {self.record.path!r} failed: "
                    f"{type(error).__name__}: {error}")
                log.warning("cache fill of %r failed: %s", self.record.path, self.error.detail)
            else:
                log.warning("a verified cache fill of %r could not be kept: %s",
                            self.record.path, exc)
        finally:
            os.close(self._fd)
            self._announce()

    async def _download(self, remote: Remote, blocks: MemoryObjectSendStream[bytes],
                        stall: float) -> None:
        chunks = remote.get(self.record.path).__aiter__()
        buffer = bytearray()
        first = True
        while True:
            try:
                with anyio.fail_after(stall):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RemoteUnavailable(
                    f"the download of {self.record.path!r} stalled for {stall:.0f}s") from None
            buffer += chunk
            # 1 MiB blocks, except the first: it goes at once, so the first byte reaches the
            # clients as soon as the store sends it.
            if len(buffer) >= CHUNK_SIZE or first:
                await blocks.send(bytes(buffer))
                buffer = bytearray()
                first = False
        if buffer:
            await blocks.send(bytes(buffer))

    async def _writer(self, blocks: MemoryObjectReceiveStream[bytes],
                      digest: hashlib._Hash) -> None:
        async with blocks:
            async for block in blocks:
                await anyio.to_thread.run_sync(self._write_block, block, digest)
                self.written += len(block)
                self._announce()

    def _write_block(self, block: bytes, digest: hashlib._Hash) -> None:
        """One thread call per block: write it, then hash it."""
        view = memoryview(block)
        while view:
            view = view[os.write(self._fd, view):]
        digest.update(block)


class FillBytes:
    """A reader of a `Fill` for one response: serves bytes as they land, waits for the rest,
    and holds back the response's `final` byte until the whole download is verified."""

    def __init__(self, fill: Fill, final: int) -> None:
        self.fill = fill
        self.final = final
        self.fd = os.open(fill.tmp, os.O_RDONLY | os.O_CLOEXEC)

    def available(self) -> int:
        """How many bytes from the start a reader may have now."""
        fill = self.fill
        return fill.written if fill.verified else min(fill.written, self.final)

    async def read(self, length: int, offset: int) -> bytes | bytearray:
        while self.available() <= offset:
            if self.fill.error is not None:
                # Mid-body: the response fails and the server cuts the connection, so the
                # client never sees a clean end of a body that was not verified.
                raise self.fill.error
            await self.fill.changed()
        return await pread(self.fd, min(length, self.available() - offset), offset)

    def close(self) -> None:
        os.close(self.fd)
