"""Bytes read straight from the cloud for one response, kept nowhere.

For what the cache does not hold and should not wait for: a file larger than the whole cache (or
one no room can be made for), and a range far ahead of a running fill. Each contiguous run of reads
is one ranged GET; a read elsewhere (the next part of a multipart answer) closes it and opens the
next. Memory stays at one remote chunk.

A response that reads the whole object from its first byte is verified like a fill: its last
bytes go out only once the SHA-256 of everything matched the registry. A range cannot be verified
on its own and is served as the store sent it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import anyio

from ..errors import RemoteIntegrityError, RemoteUnavailable
from ..registry import FileRecord
from ..remote import Readable
from .usage import Usage

log = logging.getLogger("filestore.cache")


class RemoteBytes:
    def __init__(self, remote: Readable, record: FileRecord, ranges: list[tuple[int, int]],
                 stall: float, usage: Usage) -> None:
        self.remote = remote
        self.record = record
        self.ranges = ranges  # the response's parts, in the order they are sent
        self.stall = stall
        self.usage = usage
        self._chunks: AsyncIterator[bytes] | None = None
        self._position = 0  # where the open GET's next byte belongs
        self._pending = b""  # received, not yet handed out
        self._digest: hashlib._Hash | None = None  # only while reading the whole object

    async def start(self) -> None:
        """Open the first part's GET and wait for its first bytes, so a missing object or an
        unreachable store is an error status, not a broken body."""
        await self._open(self.ranges[0][0])
        self._pending = await self._next_chunk()

    async def read(self, length: int, offset: int) -> bytes | bytearray:
        if self._chunks is None or offset != self._position:
            await self._open(offset)
        if not self._pending:
            self._pending = await self._next_chunk()
        block, self._pending = self._pending[:length], self._pending[length:]
        self._position += len(block)
        if self._digest is not None:
            self._digest.update(block)
            if self._position == self.record.size:
                self._verify()  # before the last bytes leave
        return block

    async def _open(self, offset: int) -> None:
        """A GET from `offset` to the end of the part that holds it."""
        await self.aclose()
        last = next(last for first, last in self.ranges if first <= offset <= last)
        self._chunks = self.remote.get(self.record.path, offset, last).__aiter__()
        self._position = offset
        self._pending = b""
        whole = offset == 0 and last == self.record.size - 1
        self._digest = hashlib.sha256() if whole else None

    async def _next_chunk(self) -> bytes:
        assert self._chunks is not None
        try:
            with anyio.fail_after(self.stall):
                chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""  # ended early: the response reports the short file
        except TimeoutError:
            raise RemoteUnavailable(f"the download of {self.record.path!r} stalled for "
                                    f"{self.stall:.0f}s") from None
        self.usage.count("remote_bytes", len(chunk))
        return chunk

    def _verify(self) -> None:
        assert self._digest is not None
        if self._digest.hexdigest() != self.record.sha256:
            self.usage.count("integrity_failures")
            error = RemoteIntegrityError(
                f"the remote copy of {self.record.path!r} is not the recorded file "
                f"(sha256 {self._digest.hexdigest()}, recorded {self.record.sha256})")
            log.warning("read of %r straight from the cloud failed: %s", self.record.path,
                        error.detail)
            raise error

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, None
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # closes the remote's response body
