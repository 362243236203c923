"""uvicorn's httptools protocol with the limits it lacks: a request head (request line and
headers) may be at most `MAX_HEAD_BYTES` and must arrive within `HEAD_TIMEOUT` seconds, and a
body that stalls for `BODY_IDLE_TIMEOUT` seconds is cut.

uvicorn 0.54 bounds none of these with httptools (`h11_max_incomplete_event_size` is h11's only,
and h11 halves small-file throughput; `timeout_keep_alive` only runs between requests, and any
byte cancels it): one client sending an endless header made the server hold 100 MB and more,
for as long as it liked, and a slow client could hold a connection (and a PUT's temp file) open
forever. Measured in tests/test_hostile.py.

The limits are deadlines, not a timer per request: arming one is a `loop.time()` and a store,
and a connection keeps one timer that fires at its earliest deadline and looks again. A timer
per request (a `call_later` and a `cancel` for the head, again for the body) cost a fifth of a
bare uvicorn's throughput on small GETs (bench/serve.py's 1 KiB file: 24k -> 19k req/s with 2
workers and an app that does nothing).

(Holding a response's head to send it with the first body bytes in one `writev` gained about 10%
on 1 KiB GETs under wrk, but stalled some request/response patterns by a delayed ACK, 40 ms: a
PUT's answer went from 7 ms to 42 ms on average. It was taken out.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # nginx's large_client_header_buffers allow 4 x 8 KiB
HEAD_TIMEOUT = 30.0  # nginx client_header_timeout is 60 s
BODY_IDLE_TIMEOUT = 60.0  # nginx client_body_timeout: between two reads, not for the whole body

_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
        b"content-length: 33\r\nconnection: close\r\n\r\nRequest header fields too large.\n")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes received while a head is incomplete (a head that never ends is cut by these),
        # and the bytes of the head's request target and fields as the parser hands them over
        # (exact, whatever else the same read carried: a body, the next request).
        self._head_bytes = 0
        self._head_parsed = 0
        self._in_head = True
        self._refused = False  # the head was too large: nothing more is parsed or answered
        # When the connection is cut unless it moves on (`loop.time()`); None: no limit runs.
        self._deadline: float | None = None
        # The connection's one timer, due at or before `_deadline` (None: none pending).
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(HEAD_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        elif self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
            self._arm(BODY_IDLE_TIMEOUT)  # the body is still coming: it may pause, not stall
        super().data_received(data)
        over = self._refused or (self._in_head and self._head_bytes > MAX_HEAD_BYTES)
        if over and not self.transport.is_closing():
            self._refused = True
            self.logger.warning("Request head over %d bytes: refused.", MAX_HEAD_BYTES)
            self.transport.write(_431)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_parsed = 0
        if self._deadline is None:  # else the head's time runs from the connection's start
            self._arm(HEAD_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        if self._head_parsed <= MAX_HEAD_BYTES:  # past the limit nothing more is kept
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_parsed <= MAX_HEAD_BYTES:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self._head_parsed > MAX_HEAD_BYTES:
            # The whole head came in the read that completed it: refused after that read (see
            # data_received), and the request never reaches the application.
            self._refused = True
            return
        self._arm(BODY_IDLE_TIMEOUT)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._deadline = None  # the pending timer, if any, finds nothing to do
        # What comes next is the next request's head. Not when the response completes: an
        # early answer (a 507 to a body still streaming in) comes before the body's end, and
        # the rest of the body is no head to count.
        self._in_head = True
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        deadline = self._deadline = self.loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > deadline:  # a later timer would cut it too late
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        """The timer: cut the connection if its deadline passed, else wait for the deadline."""
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:  # moved on since the timer was set
            self._timer = self.loop.call_at(deadline, self._check)
        elif not self.transport.is_closing():
            self._deadline = None
            self.transport.close()  # a waiting request sees a disconnect, its temp file goes
