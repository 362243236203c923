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

from ..errors import FilestoreError, RemoteError, RemoteIntegrityError, RemoteUnavailable
from ..registry import FileRecord
from ..remote import Remote
from ..responses import CHUNK_SIZE, pread

log = logging.getLogger("filestore.cache")


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
        """Download, verify, install. Never raises: the outcome is in `verified` / `error`."""
        digest = hashlib.sha256()
        try:
            chunks = remote.get(self.record.path).__aiter__()
            buffer = bytearray()
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
                if len(buffer) >= CHUNK_SIZE:
                    await self._write(bytes(buffer), digest)
                    buffer = bytearray()
            if buffer:
                await self._write(bytes(buffer), digest)
            if self.written != self.record.size or digest.hexdigest() != self.record.sha256:
                raise RemoteIntegrityError(
                    f"the remote copy of {self.record.path!r} is not the recorded file "
                    f"({self.written} bytes, sha256 {digest.hexdigest()}; recorded "
                    f"{self.record.size} bytes, {self.record.sha256})"
                )
            await anyio.to_thread.run_sync(os.fsync, self._fd)
            await anyio.to_thread.run_sync(install, self)
            self.verified = True
        except Exception as exc:
            self.error = exc if isinstance(exc, FilestoreError) else RemoteError(
                f"the download of {self.record.path!r} failed: {type(exc).__name__}: {exc}")
            log.warning("cache fill of %r failed: %s", self.record.path, self.error.detail)
        finally:
            os.close(self._fd)
            self._announce()

    async def _write(self, block: bytes, digest: hashlib._Hash) -> None:
        def write() -> None:
            view = memoryview(block)
            while view:
                view = view[os.write(self._fd, view):]
            digest.update(block)

        await anyio.to_thread.run_sync(write)
        self.written += len(block)
        self._announce()


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
