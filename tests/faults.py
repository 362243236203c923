"""A fault-injecting TCP proxy to put in front of moto's server.

moto is a well-behaved S3; real stores go away, reset connections and stall. The proxy forwards
connections to its target while `up`, and while `down` resets every new connection at once (as a
crashed or unreachable store would). It counts the connections it accepted.
"""

from __future__ import annotations

import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.is_up = True
        self.connections = 0
        self._closed = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the ones in progress."""
        self.is_up = False
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def up(self) -> None:
        self.is_up = True

    def close(self) -> None:
        self._closed = True
        self.down()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if not self.is_up:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1024 * 1024):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(source)
            _reset(sink)


def _reset(sock: socket.socket) -> None:
    try:
        # Linger 0: close with a TCP RST, like a store that crashed mid-request.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
