"""A fault-injecting TCP proxy to put in front of moto's server.

moto is a well-behaved S3; real stores go away, reset connections and stall. The proxy forwards
connections to its target while `up`; `down` cuts the connections in progress with a reset and
stops listening, so new ones are refused (as a crashed or unreachable store would be); `up`
listens on the same port again. With `latency`, each connection waits before it is forwarded;
with `rate`, the store's answers trickle at that many bytes per second (a slow store). It counts
the connections it accepted.

With `http=True` it also reads the HTTP/1.1 exchanges it forwards, one request and its answer at
a time, so faults can be aimed at single requests (by method and a part of the request target,
for the next `times` of them) on connections a client keeps open:

- `answer(status, code)`: the store answers with an S3 error document (503 SlowDown, 500
  InternalError, ...) instead of doing the work; the request never reaches moto.
- `corrupt(offset)`: one byte of the answer's body is flipped on its way.
- `reset_after(n)`: the connection breaks after `n` bytes of the answer's body, which arrive
  (-1: a reset before its head, after the store did the work: a PUT stored, its answer lost).
- `stall_after(n)`: the answer stops after `n` bytes of its body (-1: before its head) until the
  client gives up on the connection, the fault is cleared, or the proxy goes down.

Each returns the armed `Fault`, whose `hits` says how many requests it met. Body faults apply to
answers framed by Content-Length (moto's); a chunked answer passes through untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import socket
import struct
import threading
import time

_BLOCK = 1024 * 1024
_MAX_HEAD = 64 * 1024
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


@dataclasses.dataclass(eq=False)
class Fault:
    """One armed fault and the requests it applies to."""

    kind: str  # "answer" | "corrupt" | "reset" | "stall"
    method: str | None = None  # only requests with this method (None: any)
    path: str | None = None  # only requests whose target contains this (None: any)
    times: int | None = 1  # how many more requests it applies to (None: until cleared)
    after: int = 0  # corrupt: offset of the flipped byte; reset/stall: body bytes let through
    status: int = 0  # answer: the status and S3 error code sent back
    code: str = ""
    hits: int = 0  # requests it applied to so far
    released: threading.Event = dataclasses.field(default_factory=threading.Event)

    def matches(self, method: str, target: str) -> bool:
        return (self.times is None or self.times > 0) and \
            (self.method is None or self.method == method) and \
            (self.path is None or self.path in target)


class FaultProxy:
    def __init__(self, target_port: int, latency: float = 0.0, rate: int = 0,
                 http: bool = False) -> None:
        self.target = ("127.0.0.1", target_port)
        self.latency = latency  # seconds each new connection waits before it is forwarded
        self.rate = rate  # bytes per second from the store to its clients (0: no limit)
        self.http = http  # read the exchanges, so that faults can be aimed at requests
        self.port = 0
        self.connections = 0
        self.requests = 0  # requests seen (http mode only)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._faults: list[Fault] = []
        self._listener: socket.socket | None = None
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        if self._listener is None:
            self._listener = socket.create_server(("127.0.0.1", self.port))
            self.port = self._listener.getsockname()[1]
            threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the ones in progress."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the accept() blocked in the accept thread; close() alone would
            # leave the socket listening until that accept() returned.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def close(self) -> None:
        self.clear()
        self.down()

    # -- faults aimed at requests (http mode) -----------------------------------------------------

    def answer(self, status: int, code: str, *, method: str | None = None,
               path: str | None = None, times: int | None = 1) -> Fault:
        """Answer matching requests with an S3 error document instead of forwarding them."""
        return self._arm(Fault("answer", method, path, times, status=status, code=code))

    def corrupt(self, offset: int = 0, *, method: str | None = None, path: str | None = None,
                times: int | None = 1) -> Fault:
        """Flip the byte at `offset` of matching answers' bodies."""
        return self._arm(Fault("corrupt", method, path, times, after=offset))

    def reset_after(self, after: int, *, method: str | None = None, path: str | None = None,
                    times: int | None = 1) -> Fault:
        """Reset the connection after `after` bytes of matching answers' bodies (-1: before
        the answer's head, once the store did the work)."""
        return self._arm(Fault("reset", method, path, times, after=after))

    def stall_after(self, after: int, *, method: str | None = None, path: str | None = None,
                    times: int | None = 1) -> Fault:
        """Stop matching answers after `after` bytes of their bodies (-1: before the head)."""
        return self._arm(Fault("stall", method, path, times, after=after))

    def clear(self) -> None:
        """Disarm every fault and let go of the answers held by stalls (their connections are
        reset: the bytes held back are lost, as they would be with a store that hung)."""
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.released.set()

    def _arm(self, fault: Fault) -> Fault:
        if not self.http:
            raise ValueError("faults aimed at requests need FaultProxy(..., http=True)")
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take(self, method: str, target: str) -> Fault | None:
        """The first armed fault for this request, counted as applied."""
        with self._lock:
            self.requests += 1
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    # -- forwarding -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.latency:
            time.sleep(self.latency)  # a slow store (this runs in the connection's own thread)
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        if self.http:
            upstream.settimeout(None)
            exchange = _Exchange(client, upstream)
            threading.Thread(target=self._answers, args=(exchange,), daemon=True).start()
            self._requests(exchange)
            return
        threading.Thread(target=self._pump, args=(upstream, client, self.rate),
                         daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket, rate: int = 0) -> None:
        step = max(rate // 10, 1) if rate else 1024 * 1024
        try:
            while data := source.recv(step):
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)  # a slow store: pace what it sends
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(source)
            _reset(sink)

    # -- http mode: requests one way, answers the other, in a thread each -------------------------

    def _requests(self, exchange: _Exchange) -> None:
        """Client to store: each request head is matched against the faults, then forwarded
        with its body (or answered here, for an `answer` fault)."""
        reader = _Reader(exchange.client)
        try:
            while (head := reader.head()) is not None:
                method, target, headers = _parse_head(head)
                fault = self._take(method, target)
                if fault is not None and fault.kind == "answer":
                    if headers.get("expect", "").lower() != "100-continue":
                        _copy_body(reader, headers, None)  # read, so the client is not cut
                    exchange.client.sendall(_error_document(fault, method))
                    exchange.close()  # the answer said "Connection: close"
                    return
                exchange.pending.put((method, fault))
                exchange.upstream.sendall(head)
                _copy_body(reader, headers, exchange.upstream)
        except Exception:  # a cut connection, or bytes that are not HTTP: the exchange ends
            exchange.close(reset=True)
        finally:
            exchange.client_gone.set()  # a stall holding an answer for it can end
            exchange.close()
            self._forget(exchange)

    def _answers(self, exchange: _Exchange) -> None:
        """Store to client: each answer's head and body, with the fault its request drew."""
        reader = _Reader(exchange.upstream)
        try:
            while (head := reader.head()) is not None:
                status, headers = _parse_status(head)
                if 100 <= status < 200:  # "100 Continue": the request's body may follow
                    exchange.client.sendall(head)
                    continue
                method, fault = exchange.pending.get(timeout=30)
                if fault is not None and fault.kind in ("reset", "stall") and fault.after < 0:
                    self._break(exchange, fault)
                    return
                self._send(exchange.client, head)
                if method == "HEAD" or status in (204, 304):
                    continue
                length = headers.get("content-length")
                if length is None and "chunked" in headers.get("transfer-encoding", ""):
                    _copy_body(reader, headers, exchange.client)
                    continue
                if not self._body(reader, exchange, None if length is None else int(length),
                                  fault):
                    return
                if length is None:
                    break  # a body that ends with the connection
        except Exception:  # a cut connection, or bytes that are not HTTP: the exchange ends
            exchange.close(reset=True)
        finally:
            exchange.close()
            self._forget(exchange)

    def _body(self, reader: _Reader, exchange: _Exchange, length: int | None,
              fault: Fault | None) -> bool:
        """Forward one answer's body (`length` bytes, None: up to the end of the connection),
        doing what `fault` asks; False if the connection was broken on purpose."""
        sent = 0
        while length is None or sent < length:
            data = reader.read(_BLOCK if length is None else min(_BLOCK, length - sent))
            if not data:
                if length is None:
                    return True
                raise OSError("the store closed the connection mid-body")
            if fault is not None and fault.kind == "corrupt" \
                    and sent <= fault.after < sent + len(data):
                flipped = bytearray(data)
                flipped[fault.after - sent] ^= 0xFF
                data = bytes(flipped)
            elif fault is not None and fault.kind in ("reset", "stall") \
                    and sent + len(data) > fault.after:
                self._send(exchange.client, data[:fault.after - sent])
                self._break(exchange, fault)
                return False
            self._send(exchange.client, data)
            sent += len(data)
        return True

    def _break(self, exchange: _Exchange, fault: Fault) -> None:
        """Break the answer where it stands, then reset the connection.

        A stall sends nothing more until the client leaves, the fault is cleared or the proxy
        goes down. A reset mid-body first ends the client's side of the stream, so the bytes
        already sent arrive before the cut (a reset straight away would make the client's
        kernel drop the ones it had not handed over yet, and the cut land at a random byte)."""
        if fault.kind == "stall":
            while not (exchange.client_gone.wait(0.02) or fault.released.is_set()):
                pass
        elif fault.after >= 0:
            with contextlib.suppress(OSError):
                exchange.client.shutdown(socket.SHUT_WR)
            exchange.client_gone.wait(10)
        exchange.close(reset=True)

    def _send(self, sink: socket.socket, data: bytes) -> None:
        if not self.rate:
            sink.sendall(data)
            return
        step = max(self.rate // 10, 1)
        for start in range(0, len(data), step):
            block = data[start:start + step]
            sink.sendall(block)
            time.sleep(len(block) / self.rate)  # a slow store: pace what it sends

    def _forget(self, exchange: _Exchange) -> None:
        with self._lock:
            self._open.discard(exchange.client)
            self._open.discard(exchange.upstream)


class _Exchange:
    """One client connection and the store connection it is forwarded to."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.pending: queue.Queue[tuple[str, Fault | None]] = queue.Queue()  # requests sent
        self.client_gone = threading.Event()

    def close(self, reset: bool = False) -> None:
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread's recv()
            with contextlib.suppress(OSError):
                sock.close()


class _Reader:
    """Buffered reads of a socket: whole HTTP heads, and bodies in blocks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(_BLOCK)
        self.buffer += data
        return bool(data)

    def head(self) -> bytes | None:
        """The next head, up to its blank line; None at a clean end of the connection."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise OSError("an HTTP head too long to be one")
            if not self._fill():
                if self.buffer:
                    raise OSError("the connection ended mid-head")
                return None
        head = bytes(self.buffer[:end + 4])
        del self.buffer[:end + 4]
        return head

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if not self._fill():
                raise OSError("the connection ended mid-line")
        line = bytes(self.buffer[:end + 2])
        del self.buffer[:end + 2]
        return line

    def read(self, limit: int) -> bytes:
        """Up to `limit` bytes; b"" at the end of the connection."""
        if not self.buffer and not self._fill():
            return b""
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return data

    def exactly(self, length: int) -> bytes:
        data = b""
        while len(data) < length:
            block = self.read(length - len(data))
            if not block:
                raise OSError("the connection ended mid-body")
            data += block
        return data


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = first.split(" ", 2)
    return method, target, _headers(lines)


def _parse_status(head: bytes) -> tuple[int, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    return int(first.split(" ", 2)[1]), _headers(lines)


def _headers(lines: list[str]) -> dict[str, str]:
    fields = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in fields}


def _copy_body(reader: _Reader, headers: dict[str, str], sink: socket.socket | None) -> None:
    """Move one message body (Content-Length or chunked) from `reader` to `sink` (None: read
    and drop it)."""
    def send(data: bytes) -> None:
        if sink is not None:
            sink.sendall(data)

    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size_line = reader.line()
            send(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := reader.line()) != b"\r\n":
                    send(trailer)
                send(b"\r\n")
                return
            send(reader.exactly(size + 2))  # the chunk and its CRLF
    remaining = int(headers.get("content-length", "0"))
    while remaining > 0:
        data = reader.read(min(_BLOCK, remaining))
        if not data:
            raise OSError("the connection ended mid-body")
        send(data)
        remaining -= len(data)


def _error_document(fault: Fault, method: str) -> bytes:
    """An S3 error answer, as a store that refuses the request sends it."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
            f"<Message>injected by the fault proxy</Message><RequestId>fault</RequestId>"
            "</Error>").encode()
    if method == "HEAD":
        body = b""
    head = (f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


def _reset(sock: socket.socket) -> None:
    """Cut `sock` with a TCP RST, like a store that crashed mid-request."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # close() alone would not wake a pump thread blocked in recv() on this socket (the
        # kernel keeps it open for that thread): shutting the read side down does.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
