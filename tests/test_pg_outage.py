"""A PostgreSQL outage under a real `filestore serve`: while the registry's server is down every
request that needs it is a 503 with Retry-After (never a 500), `/readyz` is 503 with Retry-After,
`/metrics` still answers (`filestore_ready{check="registry"} 0`), the S3 endpoint answers
`ServiceUnavailable` and the CLI says so in one line; once it is back, requests succeed again and
the upload queued before the outage completes, with no restart of filestore. The background
loops say the outage once each and that they resumed, without a traceback."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import psycopg
import pytest
from click.testing import CliRunner
from conftest import free_port, wait_for

from filestore import metrics
from filestore.accounts import Accounts
from filestore.cli import main
from filestore.errors import RegistryUnavailable
from filestore.queue import moves, worker
from filestore.registry import Entry, Job
from filestore.registry.postgres import PostgresRegistry

if TYPE_CHECKING:  # imported by pytest as the plugin below: only its type here
    from pg import PostgresServer

pytest_plugins = ["pg"]

RETRY_AFTER = "5"  # health.RETRY_AFTER_SECONDS
READY = 'filestore_ready{check="registry"}'
# The loops that look at the registry every second: each says an outage once, then "resumed".
LOOPS = ("cache upkeep", "move jobs: looking for work", "settings: looking for saved settings")


def s3_get(url: str) -> httpx.Response:
    """A GET of an object, signed with a key nobody made: the endpoint looks the key up in the
    registry (403 InvalidAccessKeyId when it can) before anything else."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"{url}/media/a.txt")
    S3SigV4Auth(Credentials("AKIANOBODYMADETHIS00", "x" * 40), "s3",
                "us-east-1").add_auth(request)
    headers = {name: value.decode() if isinstance(value, bytes) else value
               for name, value in request.headers.items()}
    return httpx.get(request.url, headers=headers, timeout=10)


class Seen:
    """Every status the server answered, so no 500 slips by between the assertions."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.statuses: list[int] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        answer = self.client.request(method, url, **kwargs)
        self.statuses.append(answer.status_code)
        return answer


def unavailable(answer: httpx.Response) -> bool:
    return (answer.status_code == 503 and answer.headers.get("retry-after") == RETRY_AFTER
            and answer.json()["error"] == "registry_unavailable")


@pytest.mark.timeout(60)
def test_a_postgresql_outage_is_a_503_and_work_resumes_by_itself(
        serve_process: Callable[..., Any], postgres: PostgresServer, pg_registry_url: str,
        tmp_path: Path) -> None:
    s3_port = free_port()
    # The upload waits 3 s after its PUT, so it is still queued when PostgreSQL goes down.
    server = serve_process(tmp_path / "data", registry__url=pg_registry_url, upload__delay="3s",
                           cache__min_free="0", s3__port=str(s3_port)).start()
    s3_url = f"http://127.0.0.1:{s3_port}"
    # The test's own registry on the same database: what a writer meets, below HTTP.
    registry = PostgresRegistry(pg_registry_url, pool_size=1)
    halted = False
    with server.client() as client, contextlib.closing(registry):
        request = Seen(client)
        assert request("PUT", "/files/media/a.txt", content=b"alpha").status_code == 201
        assert request("PUT", "/files/media/b.txt", content=b"beta").status_code == 201
        assert s3_get(s3_url).status_code == 403  # the key looked up, and unknown
        try:
            postgres.halt("fast")
            halted = True
            # The first request to find the connections gone, and every later one: a 503.
            assert unavailable(request("GET", "/files/media/b.txt"))  # never read: no copy kept
            assert unavailable(request("GET", "/files/media/nobody.txt"))
            assert unavailable(request("PUT", "/files/media/c.txt", content=b"gamma"))
            assert unavailable(request("DELETE", "/files/media/a.txt"))
            assert unavailable(request("GET", "/admin/api/stats"))
            answer = request("GET", "/readyz")
            assert answer.status_code == 503 and answer.headers.get("retry-after") == RETRY_AFTER
            assert answer.json()["checks"]["registry"]["ok"] is False
            # A scrape still answers: the figures that need no registry, and the alert's cue.
            scrape = request("GET", "/metrics")
            assert scrape.status_code == 200, scrape.text
            assert f"{READY} 0.0" in scrape.text.splitlines(), scrape.text
            assert "filestore_disk_free_bytes" in scrape.text
            answer = s3_get(s3_url)
            assert answer.status_code == 503 and b"<Code>ServiceUnavailable</Code>" in (
                answer.content)
            # A writer whose pooled connection died is told within about a second, not after
            # the pool's 30 s timeout.
            began = time.monotonic()
            with (pytest.raises(RegistryUnavailable, match="cannot be reached"),
                  registry.transaction() as tx):
                tx.files.get("media/a.txt")
            assert time.monotonic() - began < 5
            cli = CliRunner().invoke(main, ["stats"], env={
                "FILESTORE_CONFIG": "", "FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "cli"),
                "FILESTORE_REGISTRY__URL": pg_registry_url})
            assert cli.exit_code != 0 and "PostgreSQL" in cli.output
            assert len(cli.output.strip().splitlines()) == 1, cli.output
        finally:
            if halted:
                postgres.start()  # the session's server, which other tests share

        # Back: no restart of filestore, the next requests succeed by themselves.
        wait_for(lambda: request("PUT", "/files/media/c.txt", content=b"gamma").status_code
                 == 201, timeout=20, interval=0.2)
        assert request("GET", "/files/media/b.txt").content == b"beta"
        assert request("DELETE", "/files/media/a.txt").status_code == 204
        answer = request("GET", "/readyz")
        assert answer.status_code == 200 and "retry-after" not in answer.headers
        assert f"{READY} 1.0" in request("GET", "/metrics").text.splitlines()
        assert s3_get(s3_url).status_code == 403
        # The upload queued before the outage went up once the queue could lease it again.
        remote = tmp_path / "data" / "remote"

        def uploaded() -> bool:
            stats = request("GET", "/admin/api/stats").json()
            return bool(stats["queue"]["upload"]["pending"] == 0
                        and (remote / "media" / "b.txt").exists())

        wait_for(uploaded, timeout=20, interval=0.2)
        assert (remote / "media" / "b.txt").read_bytes() == b"beta"
        assert 500 not in request.statuses, request.statuses
        # Each loop saw the outage (a round a second) and said it once; and that it resumed.
        wait_for(lambda: all(f"{loop} resumed" in "".join(server.output) for loop in LOOPS),
                 timeout=5, interval=0.2)
    _, output = server.stop()
    assert "unexpected error" not in output, output  # CatchUnexpected's 500s
    assert "Traceback" not in output, output
    assert "error connecting in" not in output, output  # psycopg's pool, at every retry
    for loop in LOOPS:
        assert output.count(f"{loop} failed:") == 1, output
        assert output.count(f"{loop} resumed") == 1, output


def test_a_statement_of_its_own_error_is_not_an_outage(pg_registry_url: str) -> None:
    """Only a lost connection is `RegistryUnavailable`: bad SQL and a refused row surface as
    psycopg raised them, on a reader and in a transaction alike."""
    registry = PostgresRegistry(pg_registry_url, pool_size=1)
    try:
        with pytest.raises(psycopg.errors.SyntaxError):
            registry.read._link.value("SELEC 1")
        with pytest.raises(psycopg.errors.UndefinedTable), registry.transaction() as tx:
            tx._link.execute("SELECT * FROM no_such_table")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            registry.read._link.execute("CREATE TABLE t (x int)")
        assert registry.read._link.value("SELECT 1") == 1  # and the connections still serve
        with registry.transaction() as tx:
            assert tx._link.value("SELECT 1") == 1
    finally:
        registry.close()


def test_a_pooled_connection_the_server_ended_is_replaced_before_a_transaction_gets_it(
        pg_registry_url: str) -> None:
    """The pool checks a connection with a round trip only when its socket has something to
    say; a backend the server terminated while the connection idled has (its FATAL message,
    then the end): the next transaction runs on a new connection, not into an outage."""
    registry = PostgresRegistry(pg_registry_url, pool_size=1)
    try:
        with registry.transaction() as tx:
            first = tx._link.value("SELECT pg_backend_pid()")
        with psycopg.connect(pg_registry_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()
            wait_for(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                           (first,)).fetchone() == (0,), timeout=10)
        with registry.transaction() as tx:
            assert tx._link.value("SELECT pg_backend_pid()") != first
    finally:
        registry.close()


# -- the background work, below a server: fakes of the registry whose server is away -------------

def outage() -> RegistryUnavailable:
    return RegistryUnavailable("the registry's PostgreSQL server (postgresql://x/y) cannot be "
                               "reached: Connection refused")


class AwayRegistry:
    """A registry whose first `away` transactions (and reads, where asked) raise the outage."""

    def __init__(self, away: int = 1_000_000, tables: Any = None) -> None:
        self.away = away
        self.tables = tables
        self.read: Any = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.away > 0:
            self.away -= 1
            raise outage()
        yield self.tables


class Lines(logging.Handler):
    """The records of one logger, whatever the log set-up of the tests before (the `filestore`
    logger does not propagate once configured)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Lines:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    @property
    def tracebacks(self) -> int:
        return sum(r.exc_info is not None for r in self.records)


def test_token_uses_not_written_wait_for_the_next_flush() -> None:
    written: list[dict[str, float]] = []
    tables = SimpleNamespace(tokens=SimpleNamespace(used=lambda used: written.append(used)))
    registry = AwayRegistry(away=1, tables=tables)
    accounts = Accounts(registry, lambda: "admin")  # type: ignore[arg-type]
    accounts._used = {"a": 1.0, "b": 2.0}
    with pytest.raises(RegistryUnavailable):
        accounts.flush()
    accounts._used["b"] = 3.0  # used again meanwhile: the newer time wins
    accounts.flush()
    assert written == [{"a": 1.0, "b": 3.0}] and accounts._used == {}


def test_a_loop_stopped_by_an_outage_says_it_once_and_that_it_resumed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "OUTAGE_PAUSE", 0.02)
    failures = 3
    running = anyio.Event()

    async def loop() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise outage()
        running.set()
        await anyio.sleep_forever()

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker._supervised, "queue dispatcher", loop)
            with anyio.fail_after(5):
                await running.wait()
                await anyio.sleep(0.2)  # longer than the pause: resumed
            tg.cancel_scope.cancel()

    with Lines("filestore.queue") as lines:
        anyio.run(run)
    assert len(lines.at(logging.WARNING)) == 1, lines.records
    assert "cannot be reached" in lines.at(logging.WARNING)[0]
    assert lines.at(logging.INFO) == ["queue dispatcher resumed"]
    assert lines.tracebacks == 0


def test_work_the_outage_cut_off_spends_no_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote delete done, its record cut off: no failed attempt counted or recorded, and the
    lease given back (once the registry answers), at once or at the dispatcher's next round."""
    attempts: list[bool] = []
    monkeypatch.setattr(metrics, "remote_attempt",
                        lambda op, remote, ok: attempts.append(ok))

    class Remote:
        name = "default"

        async def delete(self, path: str) -> None:
            pass

    for away, released in ((1, True), (2, False)):
        given_back: list[str] = []
        leased = {"a.txt": "me"}  # the queue's leases: path -> owner

        def release_stray(owner: str, keep: list[str], into: list[str] = given_back,
                          leases: dict[str, str] = leased) -> int:
            stray = [p for p, o in leases.items() if o == owner and p not in keep]
            for path in stray:
                del leases[path]
            into.extend(stray)
            return len(stray)

        tables = SimpleNamespace(queue=SimpleNamespace(
            release=lambda entry, into=given_back, leases=leased: (
                into.append(entry.path), leases.pop(entry.path)),
            release_stray=release_stray))
        workers = worker.QueueWorkers.__new__(worker.QueueWorkers)
        workers.registry = AwayRegistry(away=away, tables=tables)  # type: ignore[assignment]
        workers.remotes = {"default": Remote()}  # type: ignore[dict-item]
        workers._wakeup = anyio.Event()
        workers._fail = lambda *args: pytest.fail("an attempt was spent")  # type: ignore
        entry = Entry(path="a.txt", op="delete", version=1, remote="default", not_before=0.0,
                      attempts=0, state="pending", leased_until=time.time() + 60,
                      lease_owner="me", last_error=None)
        workers._in_flight = {entry.path: entry}
        workers.owner = "me"
        workers._stray_leases = False
        with Lines("filestore.queue") as lines:
            anyio.run(workers._work, entry)
        assert given_back == (["a.txt"] if released else [])
        assert workers._in_flight == {} and attempts == []
        assert len(lines.at(logging.WARNING)) == (0 if released else 1)
        assert lines.tracebacks == 0
        # Not given back: the dispatcher's next round releases it once the registry answers
        # (here at once: `away` is spent), not when the lease runs out.
        assert workers._stray_leases == (not released)
        anyio.run(workers._release_stray)
        assert given_back == ["a.txt"] and not workers._stray_leases


def _move_job(kind: str) -> Job:
    return Job(id=1, kind=kind, state="running", options="", total=0, total_bytes=0, done=0,
               bytes=0, errors=0, last_error=None, cursor="", scanned=0, created=0.0,
               updated=0.0, finished=None, leased_until=time.time() + 30, lease_owner="me")


def test_a_move_job_the_outage_cut_off_stays_active(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its work raises the outage, alone, also from inside the job's task groups; the job is
    not marked failed, nor a file counted as failing."""
    async def away(*args: Any) -> bool:
        raise outage()

    monkeypatch.setattr(moves, "bring_local", away)
    record = SimpleNamespace(path="a.txt", location="remote", size=1)
    registry = AwayRegistry()
    registry.read = SimpleNamespace(files=SimpleNamespace(page=lambda after, limit: [record]))
    store = SimpleNamespace(registry=registry,
                            settings=SimpleNamespace(upload=SimpleNamespace(concurrency=2)))
    runner = moves.MoveRunner(store, {}, "me", lambda: None)  # type: ignore[arg-type]
    runner._finish = lambda *args: pytest.fail("the job was failed")  # type: ignore
    runner._count = lambda *args: pytest.fail("a file was counted")  # type: ignore
    for kind in ("move-to-cloud", "move-to-local"):  # a transaction; a task of a task group
        with pytest.raises(RegistryUnavailable):
            anyio.run(runner._work_on, _move_job(kind))


def test_the_move_runner_says_an_outage_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moves, "POLL_SECONDS", 0.01)
    rounds = 0

    def active() -> None:
        nonlocal rounds
        rounds += 1
        if rounds <= 5:
            raise outage()

    registry = AwayRegistry()
    registry.read = SimpleNamespace(jobs=SimpleNamespace(active=active))
    runner = moves.MoveRunner(SimpleNamespace(registry=registry), {}, "me",  # type: ignore
                              lambda: None)

    async def run() -> None:
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.run)
                while rounds < 8:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

    with Lines("filestore.jobs") as lines:
        anyio.run(run)
    assert rounds >= 8
    assert len(lines.at(logging.WARNING)) == 1, lines.records
    assert lines.at(logging.INFO) == ["move jobs: looking for work resumed"]
    assert lines.tracebacks == 0
