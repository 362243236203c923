"""Running uvicorn for `filestore serve`: one listener, or more with `admin.listen` and `s3.port`.

With `admin.listen = "HOST:PORT"` the admin page gets a listener of its own, so it never shares
an origin with the files (docs/deploy.md); with `s3.port` the S3 endpoint answers on
`server.host:s3.port` (`s3api/`). Every socket is bound here, before any worker starts, and
every worker process serves them all. The app (`app.FastReads`) tells them apart by the local
address a request arrived on (`scope["server"]`): `/admin` answers only on the admin listener,
which answers nothing but `/admin...` and `/healthz`; the S3 listener answers S3 alone.

uvicorn's documented entry point, `uvicorn.run`, binds one socket. Two take its parts:
`Config.bind_socket`, `Server.run(sockets=...)` and, with `server.workers > 1`, the supervisor
`uvicorn.supervisors.Multiprocess`, which is an internal of uvicorn (its constructor has changed:
older versions also take the `target` each worker runs); pyproject.toml bounds uvicorn below its
next minor version.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
from typing import Any

import anyio

from .errors import ConfigError

log = logging.getLogger("filestore")

# What `filestore serve` has always passed to uvicorn.
_OPTIONS: dict[str, Any] = {
    "factory": True,
    "loop": "uvloop",
    "http": "filestore.httpguard:GuardedHttpToolsProtocol",  # httptools with limits
    "access_log": False,
    "log_level": "warning",
    "timeout_graceful_shutdown": 10,
}
APP = "filestore.app:app_from_environment"


def split_listen(listen: str) -> tuple[str, int]:
    """`"HOST:PORT"` (config.parse_listen checked it; an IPv6 host in brackets) -> host, port."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def admin_url(listen: str, host: str, port: int) -> str:
    """Where the admin page answers: on `admin.listen` when set, else on the main listener."""
    return f"http://{listen or f'{host}:{port}'}/admin"


@dataclasses.dataclass(frozen=True)
class AdminListener:
    """Which requests arrived on the admin listener, by their `scope["server"]`: the port, and
    (unless it listens on a wildcard) one of the addresses its host names."""

    port: int
    hosts: frozenset[str] | None  # None: any local address

    @classmethod
    def of(cls, listen: str) -> AdminListener:
        host, port = split_listen(listen)
        if host in ("0.0.0.0", "::"):
            return cls(port, None)
        try:
            return cls(port, frozenset((str(ipaddress.ip_address(host)),)))
        except ValueError:  # a host name: the addresses it resolves to
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            return cls(port, frozenset(str(ipaddress.ip_address(i[4][0])) for i in infos))

    def serves(self, server: tuple[str, int] | None) -> bool:
        """Whether a request whose `scope["server"]` is `server` came in on this listener."""
        if server is None or server[1] != self.port:
            return False
        return self.hosts is None or server[0] in self.hosts


def listen_text(host: str, port: int) -> str:
    """host:port as `admin.listen` writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(key: str, host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port, as uvicorn's `Config.bind_socket` makes one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{key}: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    sock.set_inheritable(True)  # handed to the worker processes
    return sock


async def stop_with_supervisor(check_every: float = 1.0) -> None:
    """In a worker under uvicorn's supervisor (`server.workers > 1`): once the supervisor is
    gone, stop this worker as its SIGTERM would (requests under way finish). A supervisor
    killed with SIGKILL stops none of its workers, which would otherwise go on serving the
    data directory and holding its port beside the server started after it. The worker's
    `multiprocessing` parent is the supervisor (it spawns them); a lone server has none, and
    this returns at once."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    while parent.is_alive():  # a poll of the parent's sentinel, no system-wide scan
        await anyio.sleep(check_every)
    log.warning("filestore: the server's supervisor (pid %s) is gone; this worker stops",
                parent.pid)
    os.kill(os.getpid(), signal.SIGTERM)


def run(listen: str, host: str, port: int, workers: int, s3_port: int = 0) -> None:
    """Serve the app on host:port (and on `listen`, the admin listener, and on host:s3_port,
    the S3 endpoint, when set) until a signal stops it; exit 3 (uvicorn's STARTUP_FAILURE) if
    it never started."""
    import uvicorn

    if not listen and not s3_port:
        uvicorn.run(APP, host=host, port=port, workers=workers, **_OPTIONS)
        return
    from uvicorn.config import STARTUP_FAILURE

    config = uvicorn.Config(APP, host=host, port=port, workers=workers, **_OPTIONS)
    more = [_bind("admin.listen", *split_listen(listen))] if listen else []
    if s3_port:
        more.append(_bind("s3.port", host, s3_port))
    main = config.bind_socket()  # uvicorn's own: an error there exits 3, as uvicorn.run does
    sockets = [main, *more]
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            # An internal of uvicorn: (config, sockets) now, (config, target, sockets) before.
            extra: dict[str, Any] = {}
            if "target" in inspect.signature(Multiprocess).parameters:
                extra["target"] = server.run
            Multiprocess(config, sockets=sockets, **extra).run()
            return
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
