"""Fixtures: a real uvicorn server on 127.0.0.1 (port 0) in a thread, over a temp data directory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from filestore.app import build_app
from filestore.config import load_settings
from filestore.httpguard import GuardedHttpToolsProtocol


def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


class TracebackWatch(logging.Handler):
    """Counts the tracebacks uvicorn has finished writing to its log.

    uvicorn logs a request that ended in a 500 after the response went out. Formatting a
    traceback runs `ast.parse` in Python 3.11, and doing that in the server thread while pytest
    formats a failure in the main thread can crash pytest with "SystemError: AST constructor
    recursion depth mismatch" (seen with CPython 3.11.7). So a test that got a 500 waits
    for the log line before it asserts anything.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen += 1

    def settle(self, status: int) -> None:
        if status == 500:
            wait_for(lambda: self.seen)


@pytest.fixture
def tracebacks() -> Iterator[TracebackWatch]:
    """Request this after any server fixture: starting a server reconfigures uvicorn's loggers."""
    watch = TracebackWatch()
    logger = logging.getLogger("uvicorn")  # after uvicorn's own handler, which formats first
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)


class LiveServer:
    """uvicorn serving `build_app(settings)` in a background thread until `stop()`, with the
    HTTP protocol `filestore serve` runs (httptools and its limits, see httpguard.py)."""

    def __init__(self, data_dir: Path, config: Path | None = None, *, s3: bool = False,
                 **overrides: str) -> None:
        # No free-disk floors: a test must not depend on how full the machine's disk is.
        env = {"FILESTORE_STORAGE__DATA_DIR": str(data_dir), "FILESTORE_STORAGE__MIN_FREE": "0",
               "FILESTORE_CACHE__MIN_FREE": "0"}
        sockets = []
        if s3:  # the S3 endpoint on a listener of its own, as `filestore serve` binds it
            import socket

            main, endpoint = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
            sockets = [main, endpoint]
            env["FILESTORE_S3__PORT"] = str(endpoint.getsockname()[1])
            self.s3_url = f"http://127.0.0.1:{endpoint.getsockname()[1]}"
        env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
        self.settings = load_settings(config, environ=env)
        self.app = build_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, loop="asyncio",
                                http=GuardedHttpToolsProtocol, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=asyncio.run, args=(self.server.serve(sockets=sockets or None),), daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive())
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    @property
    def service(self) -> Any:
        return self.app.state.service

    @property
    def store(self) -> Any:
        return self.service.store

    @property
    def token(self) -> str:
        return str(self.store.token)

    def client(self, auth: bool = True, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def make(data_dir: Path | None = None, config: Path | None = None, *, s3: bool = False,
             **overrides: str) -> LiveServer:
        server = LiveServer(data_dir or tmp_path / "data", config, s3=s3, **overrides)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Any) -> LiveServer:
    return make_server()  # type: ignore[no-any-return]


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@contextlib.contextmanager
def raw_connection(server: LiveServer) -> Iterator[Any]:
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def raw_request(server: LiveServer, target: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side URL normalisation); status, body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with raw_connection(server) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


# -- the registry as a test reads it: a connection of its own (the server's are its threads') --


def registry_db(server: Any) -> sqlite3.Connection:
    """A connection of the test's own (the server's are bound to its threads)."""
    conn = sqlite3.connect(server.settings.data_dir / "registry.sqlite3", timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def file_row(server: Any, path: str) -> sqlite3.Row | None:
    with contextlib.closing(registry_db(server)) as conn:
        return conn.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()


def queue_row(server: Any, path: str) -> sqlite3.Row | None:
    with contextlib.closing(registry_db(server)) as conn:
        return conn.execute("SELECT * FROM queue WHERE path = ?", (path,)).fetchone()


def counters(server: Any) -> dict[str, int]:
    with contextlib.closing(registry_db(server)) as conn:
        return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def recorded_remote(server: Any, path: str) -> bool:
    row = file_row(server, path)
    return row is not None and row["location"] == "remote"


def uploaded(server: Any, path: str) -> bool:
    """Uploaded and settled: recorded remote, and (unless in backup mode) its bytes moved out
    of files/ into the cache area, the step after the recording commit."""
    if not recorded_remote(server, path):
        return False
    return bool(server.settings.upload.keep_local
                or not (server.settings.data_dir / "files" / path).exists())



# -- S3: moto's real HTTP server on 127.0.0.1, talked to through aioboto3 -------------------------


class Moto:
    """A moto server for the session; each test gets its own bucket."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server._server.server_port  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    import os

    # moto lowers no limit by itself: allow 5 MiB multipart parts (S3's minimum) in tests.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    server = Moto()
    yield server
    server.server.stop()


@pytest.fixture
def bucket(moto: Moto, request: pytest.FixtureRequest) -> str:
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{name}-{uuid.uuid4().hex[:8]}"
    moto.client().create_bucket(Bucket=name)
    return name


def s3_overrides(moto: Moto, bucket: str, prefix: str = "fs") -> dict[str, str]:
    """LiveServer overrides that point the default remote at `bucket` on moto."""
    return {
        "remote__url": f"s3://{bucket}/{prefix}",
        "remote__endpoint_url": moto.url,
        "remote__region": "us-east-1",
        "remote__access_key_id": "test",
        "remote__secret_access_key": "test",
    }


# -- `filestore serve` as a subprocess, for what only a real process shows (kill -9, RSS, CLI) --


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`python -m filestore serve` on a free port, with `FILESTORE_*` overrides."""

    def __init__(self, data_dir: Path | None, cwd: Path | None = None, **overrides: str) -> None:
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir if data_dir is not None else (cwd or Path()) / "filestore-data"
        # Not this test process's settings: its config, nor the metrics directory the first
        # in-thread server chose for the whole process (see filestore/metrics.py).
        env = {k: v for k, v in os.environ.items()
               if k not in ("FILESTORE_CONFIG", "PROMETHEUS_MULTIPROC_DIR")}
        env.update({"FILESTORE_SERVER__PORT": str(self.port), "FILESTORE_STORAGE__MIN_FREE": "0"})
        if data_dir is not None:
            env["FILESTORE_STORAGE__DATA_DIR"] = str(data_dir)
        env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
        self.env, self.cwd = env, cwd
        self.proc: Any = None

    def start(self, timeout: float = 30) -> ServeProcess:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "filestore", "serve"], cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # Read the output as it comes: a full pipe would block the server's workers in write(2).
        self.output: list[str] = []
        self._reader = threading.Thread(target=lambda: self.output.extend(self.proc.stdout),
                                        daemon=True)
        self._reader.start()

        def up() -> bool:
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                raise AssertionError(f"filestore serve exited: {''.join(self.output)}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=timeout, interval=0.05)
        return self

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"authorization": f"Bearer {self.token}"})

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self._reader.join(timeout=5)  # the pipe ends with the process: the reader is done
        if not self._reader.is_alive():
            self.proc.stdout.close()  # no fd left behind across many restarts

    def stop(self, sig: int | None = None) -> tuple[int, str]:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return self.proc.returncode, "".join(self.output)


@pytest.fixture
def serve_process() -> Iterator[Any]:
    started: list[ServeProcess] = []

    def make(data_dir: Path | None, **kwargs: Any) -> ServeProcess:
        process = ServeProcess(data_dir, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


# Debian's Chromium (`.ci/run` installs it), driven by Playwright: the admin page's browser tests.
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for a module's tests (skipped where it is not installed)."""
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--no-sandbox", "--disable-gpu"],
        )
        yield chromium
        chromium.close()
