"""A real PostgreSQL server for the tests: Debian's `postgresql` package (`initdb` and `pg_ctl`
from `/usr/lib/postgresql/*/bin`), started once per session in a temporary directory and
stopped at its end, and a fresh database for each test that asks.

PostgreSQL refuses to run as root, and CI runs as root: then every server command runs as the
`postgres` system user the package creates (`runuser`), in a directory under /tmp made for it
and handed to that user. It listens on 127.0.0.1 on a free port (and a Unix socket in its own
directory), trusts local connections, and is tuned for tests, not durability: `fsync`,
`synchronous_commit` and `full_page_writes` off (a crash of the test machine loses nothing a
test needs).

Use: `pytest_plugins = ["pg"]` in a test module, then the `pg_url` fixture (a fresh, empty
database's URL), `pg_registry_url` (one with the registry's schema) or `postgres` (the
session's server).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

USER = "postgres"


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (None: the package is missing)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, running until `stop()`."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql "
                        "(.ci/run does)", pytrace=False)
        self.bin = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(f"/tmp/filestore-pg-{secrets.token_hex(6)}")
        self.root.mkdir(mode=0o700)
        if self.as_root:
            shutil.chown(self.root, USER, USER)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.user = USER if self.as_root else os.environ.get("USER", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync", "--no-instructions")
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-c port={self.port}",
            f"-c unix_socket_directories={self.root}", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=300",
            "-c shared_buffers=32MB"])
        self._options = options  # for `start()` after `halt()`
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        self._count = 0
        self._template: str | None = None

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr}"
                               f"{result.stdout}\n{log}")

    def database(self, template: str = "template1") -> str:
        """A new database, a copy of `template` (by default empty); its URL."""
        self._count += 1
        name = f"t{self._count}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            # A file copy of a small template is the quickest way to a new database (fsync off).
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def migrated(self) -> str:
        """A new database with the registry's schema: a copy of one migrated once a session
        (quicker than migrating each: `test_registry_contract.py` migrates fresh ones too)."""
        if self._template is None:
            url = self.database()
            from filestore.registry.postgres import PostgresRegistry

            registry = PostgresRegistry(url, pool_size=1)
            try:
                registry.migrate()
            finally:
                registry.close()  # a template has no connections while it is copied
            self._template = url.rsplit("/", 1)[1]
        return self.database(self._template)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server and keep its data, as an outage would: `fast` ends every session
        with `admin_shutdown`, `immediate` drops them unannounced. `start()` brings it back;
        the session's server must be running again when the test ends."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start the halted server again: the same port, options and databases."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database of the session's server."""
    return postgres.database()


@pytest.fixture
def pg_registry_url(postgres: PostgresServer) -> str:
    """The URL of a fresh database holding an empty registry (migrated)."""
    return postgres.migrated()
