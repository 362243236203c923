"""Sending a file's bytes: whole, one range, or several as multipart/byteranges.

Why not Starlette's FileResponse: it stats, opens, reads and closes through a thread each (about a
millisecond of CPU per request here), reads 64 KiB at a time and knows no 304. This response gets an
already open file descriptor and reads with `preadv` in 1 MiB chunks, on the event loop itself
when the bytes are in the page cache (`RWF_NOWAIT`: the kernel answers "would block" instead of
waiting for the disk) and in a worker thread only for what must come from the disk. A cached read
costs less than the thread hop, and a slow disk still never stalls the other requests.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import quote

import anyio
from starlette.types import Receive, Scope, Send

CHUNK_SIZE = 1024 * 1024
# A streamed body's first block: reading and sending a whole MiB before the first byte cost a
# 32 MiB GET about 0.8 ms of its 2.3 ms to the first byte here, and one read from another node
# (which streams the holder's answer) about 2 ms (bench/cluster.py's peer reads).
FIRST_BLOCK = 64 * 1024
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


async def pread(fd: int, length: int, offset: int) -> bytes | bytearray:
    """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
    global _NOWAIT
    buffer = bytearray(length)
    done = 0
    if _NOWAIT is not None:
        try:
            done = os.preadv(fd, [buffer], offset, _NOWAIT)
        except BlockingIOError:
            pass  # not cached: the disk must be read, off the loop
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _NOWAIT = None  # this kernel or filesystem cannot say: always use the thread
    if done < length:
        done += await anyio.to_thread.run_sync(
            os.preadv, fd, [memoryview(buffer)[done:]], offset + done
        )
    return buffer if done == length else buffer[:done]


# -- keeping uploaded bytes inert in a browser (docs/http.md "Served inert") --------------------

# On every answer that carries a file's bytes or headers: the browser runs none of the document's
# scripts, plugins or forms, and loads nothing for it but the file's own image or media. So a
# page uploaded here can never act as the origin it is served from (the admin page's, unless
# `admin.listen` gives that one a listener of its own): without scripts it can read nothing.
# `allow-same-origin` and `media-src 'self'` are what a browser's own player needs to play a
# recording or a video opened from a link (with an opaque origin it loads nothing); they give an
# uploaded page nothing it could use without scripts.
SANDBOX = "sandbox allow-same-origin; default-src 'none'; img-src 'self'; media-src 'self'"

# Types a browser renders as a document that could run script, or runs as script: served as an
# attachment unless the plan's rule says `inline = true`. Besides these: every `+xml` type
# (SVG, XHTML, RSS, MathML ...), every `multipart/*` (x-mixed-replace renders each part by its
# own type, related is MHTML) and `message/*` (web archives), and anything that is no clean
# `type/subtype` or is a placeholder (a browser would sniff it).
_ACTIVE_TYPES = frozenset((
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
    "text/xsl", "text/xml-external-parsed-entity", "application/xml-dtd",
    # JavaScript: the WHATWG MIME Sniffing standard's JavaScript MIME type essences.
    "application/ecmascript", "application/javascript", "application/x-ecmascript",
    "application/x-javascript", "text/ecmascript", "text/javascript", "text/javascript1.0",
    "text/javascript1.1", "text/javascript1.2", "text/javascript1.3", "text/javascript1.4",
    "text/javascript1.5", "text/jscript", "text/livescript", "text/x-ecmascript",
    "text/x-javascript",
    # No type at all to a browser: it would sniff the bytes.
    "*/*", "unknown/unknown", "application/unknown",
))
_ACTIVE_KINDS = frozenset(("multipart", "message"))
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 8187 attr-char besides letters and digits (quote() keeps those, "_.-~" too).
_ATTR_CHARS = "!#$&+^`|"
# Content type -> active_type(): uploaders name few distinct types, so a GET pays a dict lookup.
# Bounded: the values are the uploaders' to choose.
_active_cache: dict[str, bool] = {}
_ACTIVE_CACHE_MAX = 4096


def active_type(content_type: str) -> bool:
    """Whether a browser could run script from bytes served with this Content-Type value."""
    known = _active_cache.get(content_type)
    if known is None:
        if len(_active_cache) >= _ACTIVE_CACHE_MAX:
            _active_cache.clear()
        known = _active_cache[content_type] = _classify(content_type)
    return known


def _classify(content_type: str) -> bool:
    # A browser reads a Content-Type as a comma-separated list and takes the last valid type
    # (Fetch, "extract a MIME type"): "image/png, text/html" is HTML to it. So every item counts.
    valid = False
    for item in content_type.split(","):
        essence = item.split(";", 1)[0].strip(" \t")
        if not essence:
            continue
        kind, slash, subtype = essence.partition("/")
        if not slash or not _TOKEN.fullmatch(kind) or not _TOKEN.fullmatch(subtype):
            return True
        essence, kind, subtype = essence.lower(), kind.lower(), subtype.lower()  # ASCII by now
        if essence in _ACTIVE_TYPES or kind in _ACTIVE_KINDS or subtype.endswith("+xml"):
            return True
        valid = True
    return not valid


def attachment(path: str) -> str:
    """`Content-Disposition: attachment` naming the path's last segment (RFC 6266): `filename`
    an ASCII stand-in, and `filename*` the name itself (UTF-8, percent-encoded) when the
    stand-in differs."""
    name = path.rpartition("/")[2]
    plain = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe=_ATTR_CHARS)}"


class ByteSource(Protocol):
    """Where a response's bytes come from: a local file, or a cache entry still filling."""

    async def read(self, length: int, offset: int) -> bytes | bytearray | memoryview:
        """Up to `length` bytes at `offset`: fewer at the end of the file, and from a source
        still filling, what it has so far."""
        ...

    async def aclose(self) -> None: ...


class LocalBytes:
    """An open local file; the response owns the fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, length: int, offset: int) -> bytes | bytearray:
        return await pread(self.fd, length, offset)

    def close(self) -> None:
        """Closing an fd never waits, so it needs no shield from cancellation (see FileBody)."""
        os.close(self.fd)

    async def aclose(self) -> None:
        self.close()


class MemoryBytes:
    """Bytes read before (a small file kept by `kept.KeptFiles`): nothing to read or close."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, length: int, offset: int) -> bytes:
        return self.data[offset:offset + length]  # the whole: the very object, no copy

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class NoBytes:
    """For answers without a body (HEAD, an empty file): nothing to read."""

    async def read(self, length: int, offset: int) -> bytes | bytearray:
        raise AssertionError("a response without a body read bytes")

    async def aclose(self) -> None:
        pass


class FileBody:
    """An ASGI response that owns its `source` and closes it when done, whatever happens.

    `sent_status` and `sent_bytes` say what went out (0: no status yet), for the request
    metrics of `app.FastReads`, which do not wrap `send` to find out.
    """

    sent_status = 0
    sent_bytes = 0
    # The whole file's headers, encoded already (`whole`); else made from `headers` when sent.
    raw_headers: list[tuple[bytes, bytes]] | None = None

    def __init__(
        self,
        source: ByteSource,
        size: int,
        headers: dict[str, str],
        *,
        ranges: list[tuple[int, int]] | None = None,
        send_body: bool = True,
    ) -> None:
        self.source = source
        self.size = size
        self.headers = headers
        self.send_body = send_body
        self.status = 200
        self.parts: list[tuple[int, int, bytes]] = []  # (first, last, part header)
        if ranges is None:
            self.parts = [(0, size - 1, b"")]
            self.length = size
        elif len(ranges) == 1:
            first, last = ranges[0]
            self.status = 206
            self.headers["content-range"] = f"bytes {first}-{last}/{size}"
            self.parts = [(first, last, b"")]
            self.length = last - first + 1
        else:
            self.status = 206
            boundary = secrets.token_hex(16)
            content_type = self.headers.get("content-type", "application/octet-stream")
            self.headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
            for first, last in ranges:
                head = (
                    f"\r\n--{boundary}\r\ncontent-type: {content_type}\r\n"
                    f"content-range: bytes {first}-{last}/{size}\r\n\r\n"
                ).encode("latin-1")
                self.parts.append((first, last, head))
            self.trailer = f"\r\n--{boundary}--\r\n".encode()
            self.length = sum(last - first + 1 + len(head) for first, last, head in self.parts)
            self.length += len(self.trailer)
        self.headers["content-length"] = str(self.length)

    @classmethod
    def whole(cls, source: ByteSource, size: int, raw_headers: list[tuple[bytes, bytes]],
              send_body: bool = True) -> FileBody:
        """A 200 of the whole file with its headers encoded already, content-length included
        (a GET's headers are the same for every request of one version: see api.py)."""
        response = cls.__new__(cls)
        response.source = source
        response.size = response.length = size
        response.raw_headers = raw_headers
        response.send_body = send_body
        response.status = 200
        response.parts = [(0, size - 1, b"")]
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = self.raw_headers
            if headers is None:
                headers = [(k.encode("latin-1"), v.encode("latin-1"))
                           for k, v in self.headers.items()]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            self.sent_status = self.status
            if not self.send_body or self.length == 0:
                await send({"type": "http.response.body", "body": b""})
            elif self.length <= CHUNK_SIZE and len(self.parts) == 1:
                first, last, _ = self.parts[0]
                source = self.source
                if isinstance(source, MemoryBytes):  # a kept small file: no read to wait for
                    body: bytes | bytearray | memoryview = source.data[first:last + 1]
                else:
                    body = await self._read_exactly(last - first + 1, first)
                self.sent_bytes = len(body)
                await send({"type": "http.response.body", "body": body})
            else:
                await self._stream(receive, send)
        finally:
            source = self.source
            if isinstance(source, (LocalBytes, MemoryBytes)):
                # Most responses: a shielded scope costs more than the rest of a 1 KiB answer.
                source.close()
            else:
                with anyio.CancelScope(shield=True):
                    await source.aclose()

    async def _read_exactly(self, length: int, offset: int) -> bytes | bytearray | memoryview:
        body = await self.source.read(length, offset)
        if len(body) == length:
            return body
        whole = bytearray(body)  # a source still filling hands out what it has so far
        while len(whole) < length:
            more = await self.source.read(length - len(whole), offset + len(whole))
            if not more:
                raise OSError(f"the file ended at {offset + len(whole)}, before its recorded size")
            whole += more
        return whole

    async def _stream(self, receive: Receive, send: Send) -> None:
        # uvicorn's send() silently drops data for a client that left, so watch for the
        # disconnect ourselves and stop reading the file instead of reading it to the end.
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            try:
                async for block in self._blocks():
                    self.sent_bytes += len(block)
                    await send({"type": "http.response.body", "body": block,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            except Exception as exc:  # raised as itself, not inside the group's ExceptionGroup
                failed = exc
            tg.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _blocks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        size = FIRST_BLOCK  # then CHUNK_SIZE: the first byte need not wait for a whole MiB
        for first, last, head in self.parts:
            if head:
                yield head
            offset = first
            while offset <= last:
                block = await self.source.read(min(size, last + 1 - offset), offset)
                size = CHUNK_SIZE
                if not block:
                    raise OSError(f"the file ended at {offset}, before its recorded size")
                yield block
                offset += len(block)
        if len(self.parts) > 1:
            yield self.trailer
