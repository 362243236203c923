"""A fault-injecting TCP proxy to put in front of moto's server.

moto is a well-behaved S3; real stores go away, reset connections and stall. The proxy forwards
connections to its target while `up`; `down` cuts the connections in progress with a reset and
stops listening, so new ones are refused (as a crashed or unreachable store would be); `up`
listens on the same port again. With `latency`, each connection waits before it is forwarded;
with `rate`, the store's answers trickle at that many bytes per second (a slow store). It counts
the connections it accepted.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int, latency: float = 0.0, rate: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.latency = latency  # seconds each new connection waits before it is forwarded
        self.rate = rate  # bytes per second from the store to its clients (0: no limit)
        self.port = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
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
        self.down()

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


def _reset(sock: socket.socket) -> None:
    """Cut `sock` with a TCP RST, like a store that crashed mid-request."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # close() alone would not wake a pump thread blocked in recv() on this socket (the
        # kernel keeps it open for that thread): shutting the read side down does.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
