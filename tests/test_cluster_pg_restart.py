"""PostgreSQL restarted under load: two `filestore serve` nodes over one PostgreSQL registry and
one moto bucket, uploads running (`upload.delay = 0`), while client threads PUT, re-PUT, DELETE
and GET their own paths on either node, and the registry's server is stopped (`pg_ctl stop -m
fast`, then `-m immediate`) and started again, twice, under that load.

Each client thread has paths of its own, so a path's requests are sequential and "the last
acknowledged write" is well defined (the model of test_cluster_crash.py): a PUT or DELETE
answered 2xx settles the path; one answered 503 (the registry away: its commit may still be
recorded when the registry is back) leaves either outcome possible until the next acknowledged
write of the path.

During the run: every answer is a 200, 201, 204 or 404 that fits the model (a 200 is one whole
version the path may hold, its ETag its SHA-256), or a 503 with Retry-After; never a 500 nor any
other 5xx, never a traceback in an answer, never a connection cut (no node dies or restarts).
After each restart, within a deadline and with no restart of the nodes, both answer `/readyz`
200 and acknowledge PUTs again.

After the load: the PUTs whose commit the outage lost are settled, and each row describes its
holder's bytes; the queue drains; every node serves exactly what was acknowledged last, its
cached copy evicted first on some of them so the read comes from the bucket; the bucket holds
exactly those files with their bytes; and no version of a path was uploaded by two nodes, nor
twice, but by the node whose first upload of it the outage cut off before its record (the
upload runs again then, by design: see filestore/queue/worker.py). Every upload is seen where it
lands: moto's server runs in this process, and a WSGI middleware in front of its app records
each PutObject with the node that sent it (each node signs with an access key of its own) and
the SHA-256 it carried. Last, the queue drained within seconds of PostgreSQL's return, not only
once the leases the outage left ran out. A failed run leaves each node's output, the journal of
every request and the S3 calls in its tmp_path.

The three tests after it are what the load found, each made at a chosen moment on one
in-process node: a PUT cut between its intent and its rename, a DELETE cut between its two
transactions, and an upload cut as it starts.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import psycopg
import pytest
from conftest import Moto, ServeProcess, s3_overrides, wait_for
from test_cluster_crash import GONE, Model, Tally, body_of, digest_of, read_everywhere, settled
from test_pg_outage import Lines

from filestore.queue import worker
from filestore.queue.worker import LEASE_SECONDS
from filestore.registry import Entry
from filestore.registry.postgres.files import FileRows, IntentRows
from filestore.remote import Remote

if TYPE_CHECKING:  # imported by pytest as the plugin below: only its type here
    from pg import PostgresServer

pytest_plugins = ["pg"]

SEED = int(os.environ.get("FILESTORE_CLUSTER_PG_RESTART_SEED", "20250302"))
TOKEN = "cluster-pg-restart-token-0123456789abcdef"
SECRET = "cluster-pg-restart-secret-0123456789abcdef"
NODES = 2
CLIENTS = 4
PATHS_PER_CLIENT = 4
PREFIX = "pr"
OUTAGE_SECONDS = 2.0  # each outage lasts this long at least, the load running all along
MODES = ("fast", "immediate")  # `pg_ctl stop -m ...`: sessions ended, or dropped unannounced
RECOVERY_SECONDS = 30.0  # the deadline for each node to be ready and acknowledge PUTs again
# The deadline for the queue to drain after PostgreSQL's last start: the nodes resume their
# loops within 5 s (queue/worker.py's OUTAGE_PAUSE), and the last uploads are small.
DRAIN_SECONDS = 20.0


def access_key(node: int) -> str:
    """The S3 access key node `node` (0-based) signs with: moto takes any, and it names the
    node in each request's Authorization header."""
    return f"NODE{node + 1}TESTKEY0000000"


# -- what moto's server received --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class S3Call:
    node: str  # "n1": the node whose access key signed it ("?" for none we know)
    method: str
    key: str  # the object's key in the bucket
    query: str
    sha256: str | None  # hex, from the request's x-amz-checksum-sha256 header
    status: int
    at: float

    @property
    def put_object(self) -> bool:
        """A PutObject that stored an object (not a part, not a copy)."""
        return (self.method == "PUT" and self.status == 200
                and "uploadId" not in self.query and "partNumber" not in self.query)

    @property
    def completed_multipart(self) -> bool:
        return self.method == "POST" and "uploadId" in self.query and self.status == 200


class S3Calls:
    """A WSGI middleware in front of moto's server app (the server runs in this process, in
    threads): every request to `bucket` is recorded, with the node that signed it."""

    CREDENTIAL = re.compile(r"Credential=([^/]+)/")

    def __init__(self, moto: Moto, bucket: str) -> None:
        self.server: Any = moto.server._server  # werkzeug's, serving in a thread
        assert self.server is not None
        self.bucket = bucket
        self.inner: Callable[..., Iterable[bytes]] = self.server.app
        self.calls: list[S3Call] = []
        self.lock = threading.Lock()
        self.nodes = {access_key(i): f"n{i + 1}" for i in range(NODES)}

    def __enter__(self) -> S3Calls:
        self.server.app = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.app = self.inner

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(f"/{self.bucket}/"):
            return self.inner(environ, start_response)
        statuses: list[int] = []

        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        answer = self.inner(environ, start)
        found = self.CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        checksum = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
        call = S3Call(
            node=self.nodes.get(found.group(1), "?") if found else "?",
            method=environ.get("REQUEST_METHOD", ""), key=path[len(self.bucket) + 2:],
            query=environ.get("QUERY_STRING", ""),
            sha256=base64.b64decode(checksum).hex() if checksum else None,
            status=statuses[0] if statuses else 0, at=time.time())
        with self.lock:
            self.calls.append(call)
        return answer

    def snapshot(self) -> list[S3Call]:
        with self.lock:
            return list(self.calls)


# -- the load -----------------------------------------------------------------------------------


class Load:
    """What the clients saw, per phase of the run ("before", "down-fast", "back-fast", ...):
    the counts the main thread waits on."""

    def __init__(self) -> None:
        self.phase = "before"
        self.seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.lock = threading.Lock()

    def count(self, phase: str, node: int, what: str) -> None:
        with self.lock:
            self.seen[(phase, f"n{node + 1}", what)] += 1

    def total(self, phase: str, what: str, node: int | None = None) -> int:
        with self.lock:
            return sum(n for (p, where, w), n in self.seen.items()
                       if p == phase and w == what and (node is None or where == f"n{node + 1}"))

    def summary(self) -> dict[str, dict[str, int]]:
        with self.lock:
            out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
            for (phase, _, what), n in self.seen.items():
                out[phase][what] += n
        return {phase: dict(sorted(c.items())) for phase, c in out.items()}


class Client(threading.Thread):
    """PUT, re-PUT, DELETE and GET of its own paths, each on a random node, until told to
    stop; it checks every answer against the model."""

    def __init__(self, number: int, paths: list[str], nodes: list[ServeProcess], model: Model,
                 tally: Tally, load: Load, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"client-{number}")
        self.rng = random.Random(SEED * 100 + number)
        self.paths, self.nodes, self.model, self.tally, self.load, self.stop = (
            paths, nodes, model, tally, load, stop)
        self.generation = collections.Counter[str]()
        self.http = httpx.Client(timeout=30, headers={"authorization": f"Bearer {TOKEN}"})
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.http:
                while not self.stop.is_set():
                    node = self.rng.randrange(len(self.nodes))
                    path = self.rng.choice(self.paths)
                    roll = self.rng.random()
                    kind = "put" if roll < 0.4 else "delete" if roll < 0.52 else "get"
                    if self._do(kind, node, path) and self.rng.random() < 0.5:
                        self._do("get", (node + 1) % len(self.nodes), path)  # on another node
        except BaseException as exc:  # a bug of the test itself: raised at the end
            self.error = exc

    def _no_answer(self, phase: str, node: int, op: str, where: str, exc: Exception,
                   note: str = "") -> bool:
        """No node dies here: a request with no answer at all is a failure."""
        self.load.count(phase, node, f"{op}: no answer")
        self.tally.fail(f"{where}: no answer ({type(exc).__name__}: {exc}){note}")
        return False

    def _unavailable(self, where: str, answer: httpx.Response) -> None:
        """A 503: with a Retry-After, and an answer of filestore's, no traceback."""
        if not answer.headers.get("retry-after"):
            self.tally.fail(f"{where}: 503 without Retry-After: {answer.text[:300]}")
        self._no_traceback(where, answer)

    def _no_traceback(self, where: str, answer: httpx.Response) -> None:
        if "Traceback" in answer.text or 'File "' in answer.text:
            self.tally.fail(f"{where}: a traceback in the answer: {answer.text[:500]}")

    def _unexpected(self, where: str, answer: httpx.Response) -> None:
        self._no_traceback(where, answer)
        self.tally.fail(f"{where}: {answer.status_code} {answer.text[:300]}")

    def _do(self, kind: str, node: int, path: str) -> bool:
        """One request; whether it was a write the server acknowledged."""
        phase = self.load.phase
        url = f"{self.nodes[node].url}/files/{path}"
        where = f"[{phase}] {kind.upper()} {path} on n{node + 1}"
        if kind == "put":
            self.generation[path] += 1
            generation = self.generation[path]
            # Never empty: every body is of one path and generation only (its upload, too).
            body = body_of(path, generation, self.rng.choice(
                [self.rng.randint(1, 4096), self.rng.randint(4096, 300_000)]))
            digest = digest_of(body)
            self.model.sent(path, generation, digest)
            note = f"generation {generation} ({len(body)} B)"
            try:
                r = self.http.put(url, content=body)
            except httpx.TransportError as exc:
                self.model.maybe(path, digest)
                return self._no_answer(phase, node, "put", where, exc, f", {note}")
            self.load.count(phase, node, f"put: {r.status_code}")
            self.tally.count(f"put: {r.status_code}", where, note)
            if r.status_code in (200, 201):
                if r.json().get("sha256") != digest:
                    self.tally.fail(f"{where}: acknowledged with the SHA-256 "
                                    f"{r.json().get('sha256')}, not the body's {digest}")
                self.model.settle(path, digest)
                return True
            self.model.maybe(path, digest)  # its commit may yet be recorded (recovery.py)
            if r.status_code == 503:
                self._unavailable(where, r)
            else:
                self._unexpected(where, r)
        elif kind == "delete":
            before = self.model.possible(path)
            try:
                r = self.http.delete(url)
            except httpx.TransportError as exc:
                self.model.maybe(path, GONE)
                return self._no_answer(phase, node, "delete", where, exc)
            self.load.count(phase, node, f"delete: {r.status_code}")
            self.tally.count(f"delete: {r.status_code}", where)
            if r.status_code in (204, 404):
                if r.status_code == 404 and GONE not in before:
                    self.tally.fail(f"{where}: 404, but its last acknowledged write was a PUT")
                self.model.settle(path, GONE)
                return True
            self.model.maybe(path, GONE)
            if r.status_code == 503:
                self._unavailable(where, r)
            else:
                self._unexpected(where, r)
        else:
            possible = self.model.possible(path)  # no write of this path runs meanwhile
            try:
                r = self.http.get(url)
            except httpx.TransportError as exc:
                return self._no_answer(phase, node, "get", where, exc)
            self.load.count(phase, node, f"get: {r.status_code}")
            if self.tally.read(self.model, where, path, r, possible):
                pass
            elif r.status_code == 503:
                self._unavailable(where, r)
            else:
                self._unexpected(where, r)
        return False


# -- the nodes' logs ----------------------------------------------------------------------------


def json_lines(output: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a node's output (`log.format = "json"`), skipping any other line."""
    for line in output.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    yield parsed


def cut_uploads(output: str) -> set[str]:
    """The paths whose upload the registry's outage cut off on this node (the worker gives the
    lease back, or leaves it to run out): such an upload runs again, by design."""
    cut = set()
    for line in json_lines(output):
        found = re.match(r"upload of '(.+)' (goes again|waits for the registry)",
                         str(line.get("message", "")))
        if found:
            cut.add(found.group(1))
    return cut


def uploads_done(output: str) -> collections.Counter[str]:
    return collections.Counter(str(line.get("path")) for line in json_lines(output)
                               if line.get("event") == "upload.done")


def left_over(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The work the registry still holds: queue rows, intents, stale bytes (for a failure)."""
    with psycopg.connect(url, autocommit=True) as conn:
        now = time.time()
        return {
            "queue (path, op, version, state, attempts, due in, leased for, owner, error)": [
                (path, op, version, state, attempts, round(due - now, 1),
                 until and round(until - now, 1), owner, error)
                for path, op, version, state, attempts, due, until, owner, error in conn.execute(
                    "SELECT path, op, version, state, attempts, not_before, leased_until, "
                    "lease_owner, last_error FROM queue ORDER BY path")],
            "intents": [tuple(row) for row in conn.execute("SELECT * FROM intents")],
            "stale_bytes": [tuple(row) for row in conn.execute("SELECT * FROM stale_bytes")],
            "files not remote (path, version, location, holder)": [
                tuple(row) for row in conn.execute(
                    "SELECT path, version, location, holder FROM files "
                    "WHERE location <> 'remote' ORDER BY path")]}


def described(url: str, nodes: list[ServeProcess]) -> list[tuple[Any, ...]]:
    """Where a local file's row (its holder's) does not describe the holder's bytes in
    files/: a size or SHA-256 of other bytes. Uploads may run meanwhile (the bytes move to the
    cache area by rename): a file gone from files/ is skipped, a mismatch read again."""
    wrong: list[tuple[Any, ...]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT path, version, size, sha256, holder FROM files "
                            "WHERE location = 'local' ORDER BY path").fetchall()
        for path, version, size, sha256, holder in rows:
            where = nodes[int(holder[1:]) - 1].data_dir / "files" / path
            try:
                data = where.read_bytes()
            except FileNotFoundError:
                continue
            if (len(data), digest_of(data)) == (size, sha256):
                continue
            again = conn.execute("SELECT version, location FROM files WHERE path = %s",
                                 (path,)).fetchone()
            if again == (version, "local"):
                wrong.append((path, version, holder, size, sha256, len(data), digest_of(data)))
    return wrong


# -- the test -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)  # about 15 s; more on a loaded machine
def test_postgresql_restarted_under_load_is_503_then_work_resumes_on_every_node(
        serve_process: Callable[..., ServeProcess], postgres: PostgresServer,
        pg_registry_url: str, moto: Moto, bucket: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    print(f"seed: {SEED} (FILESTORE_CLUSTER_PG_RESTART_SEED={SEED} to run its requests again; "
          "the timing still differs between runs)")
    began = time.monotonic()
    overrides = {**s3_overrides(moto, bucket), "registry__url": pg_registry_url,
                 "cluster__secret": SECRET, "cluster__dead_after": "3s",
                 "auth__token": TOKEN, "upload__delay": "0s", "upload__concurrency": "3",
                 "upload__retry_base": "0.05s", "upload__retry_max": "0.5s",
                 "upload__max_attempts": "1000", "upload__delete_delay": "0s",
                 "cache__min_free": "0", "log__format": "json"}
    nodes = [serve_process(tmp_path / f"n{i + 1}", cluster__node=f"n{i + 1}",
                           **{**overrides, "remote__access_key_id": access_key(i)})
             for i in range(NODES)]
    tally, load, stop = Tally(), Load(), threading.Event()
    calls = S3Calls(moto, bucket)

    def save() -> None:  # to read after a failure
        for i, node in enumerate(nodes):
            (tmp_path / f"n{i + 1}.log").write_text("".join(getattr(node, "output", [])))
        with tally.lock:
            (tmp_path / "journal.txt").write_text("\n".join(tally.journal) + "\n")
        (tmp_path / "s3-calls.txt").write_text("".join(
            f"{c.at:.3f} {c.node} {c.method} {c.key}?{c.query} {c.status} {c.sha256}\n"
            for c in calls.snapshot()))

    request.addfinalizer(save)
    print(f"each node's output, the journal and the S3 calls: {tmp_path}")
    halted = False
    with calls:
        # The session's server runs with `synchronous_commit = off` (tests/pg.py): a commit
        # returns before its WAL is written, and `-m immediate` (a crash) loses the last ones,
        # an acknowledged PUT among them. What a production server never does: this database's
        # sessions, the nodes', write each commit's WAL before it returns.
        database = pg_registry_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_registry_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = on')
        for node in nodes:  # one at a time: the first migrates (the template is migrated)
            node.start()
        with psycopg.connect(pg_registry_url) as fresh:  # as a node's sessions see it
            assert fresh.execute("SHOW synchronous_commit").fetchone() == ("on",)
        pids = [node.proc.pid for node in nodes]
        paths = [f"{PREFIX}/t{t}/p{i}.bin" for t in range(CLIENTS)
                 for i in range(PATHS_PER_CLIENT)]
        model = Model(paths)
        clients = [Client(t, [p for p in paths if p.startswith(f"{PREFIX}/t{t}/")], nodes,
                          model, tally, load, stop) for t in range(CLIENTS)]
        http = httpx.Client(timeout=30, headers={"authorization": f"Bearer {TOKEN}"})

        def ready(i: int) -> bool:
            with contextlib.suppress(httpx.TransportError):
                return http.get(f"{nodes[i].url}/readyz").status_code == 200
            return False

        def acknowledged(phase: str, node: int | None = None) -> int:
            return sum(load.total(phase, f"put: {status}", node) for status in (200, 201))

        with http:
            for client in clients:
                client.start()
            try:
                wait_for(lambda: acknowledged("before") >= 20 or tally.failures, timeout=30)
                for mode in MODES:
                    # Down: halted with the load running, for OUTAGE_SECONDS at least and
                    # until the clients met the outage on both nodes.
                    tally.note(f"halting PostgreSQL (-m {mode})")
                    load.phase = f"down-{mode}"
                    postgres.halt(mode)
                    halted = True
                    halted_at = time.monotonic()
                    wait_for(lambda m=mode, at=halted_at: tally.failures or (
                        time.monotonic() - at >= OUTAGE_SECONDS
                        and all(load.total(f"down-{m}", "get: 503", i)
                                + load.total(f"down-{m}", "put: 503", i) >= 3
                                for i in range(NODES))), timeout=30, interval=0.05)
                    tally.note(f"starting PostgreSQL (after -m {mode})")
                    load.phase = f"back-{mode}"
                    postgres.start()
                    halted = False
                    back_at = time.monotonic()
                    # Back, with no restart of the nodes: ready, and PUTs acknowledged on each.
                    wait_for(lambda m=mode: tally.failures or (
                        all(ready(i) for i in range(NODES))
                        and all(acknowledged(f"back-{m}", i) >= 3 for i in range(NODES))),
                        timeout=RECOVERY_SECONDS, interval=0.1)
                    tally.note(f"both nodes ready and acknowledging PUTs "
                               f"{time.monotonic() - back_at:.1f}s after the start")
                    print(f"-m {mode}: both nodes ready and acknowledging PUTs again "
                          f"{time.monotonic() - back_at:.1f}s after PostgreSQL started")
            finally:
                if halted:
                    postgres.start()  # the session's server, which other tests share
                stop.set()
                for client in clients:
                    client.join(timeout=60)
            assert not any(c.is_alive() for c in clients), "a client hangs"
            for client in clients:
                if client.error is not None:
                    raise client.error
            assert tally.failures == [], "\n".join(tally.failures[:20])
            summary = load.summary()
            print(f"answers by phase: {summary}")
            for mode in MODES:  # the outage was met, and the work resumed after it
                assert summary[f"down-{mode}"].get("put: 503", 0) + summary[f"down-{mode}"].get(
                    "get: 503", 0) > 0, summary
                assert acknowledged(f"back-{mode}") > 0, summary
            assert [node.proc.poll() for node in nodes] == [None] * NODES
            assert [node.proc.pid for node in nodes] == pids  # the same processes all along

            # The PUTs whose commit the outage lost are settled by the nodes (recorded, or
            # dropped as never installed: docs/cluster.md) within a second or two ...
            def no_intents() -> bool:
                with psycopg.connect(pg_registry_url, autocommit=True) as conn:
                    left = conn.execute("SELECT count(*) FROM intents WHERE op = 'put'")
                    return left.fetchone() == (0,)

            try:
                wait_for(no_intents, timeout=15, interval=0.1)
            except AssertionError:
                raise AssertionError("PUT intents left 15 s after the load ended: "
                                     f"{left_over(pg_registry_url)}") from None
            # ... and the registry describes the bytes on each holder's disk: a row recording
            # other bytes than the holder's files/ has would be served and uploaded as them.
            wrong = [f"{path} version {version} on {holder}: the row says {size} B of "
                     f"generation {model.generation(path, sha)}, files/ holds {length} B of "
                     f"generation {model.generation(path, disk)}"
                     for path, version, holder, size, sha, length, disk in described(
                         pg_registry_url, nodes)]
            assert wrong == [], (wrong, left_over(pg_registry_url))

            # The queue drains: every file uploaded, every remote delete done, no stale bytes
            # left. Waited for up to the queue's lease (an upload the outage cut off whose lease
            # could not be given back waits for it to run out); how long it took is asserted
            # last, once the rest is known.
            def drained() -> bool:
                for path in paths:
                    r = http.get(f"{nodes[0].url}/admin/api/files/{path}")
                    assert r.status_code in (200, 404), (path, r.status_code, r.text)
                    if r.status_code == 200 and r.json()["location"] != "remote":
                        return False
                with psycopg.connect(pg_registry_url, autocommit=True) as conn:
                    return settled(conn)

            with psycopg.connect(pg_registry_url, autocommit=True) as conn:
                leased = [(path, op, version, owner, round(until - time.time(), 1))
                          for path, op, version, owner, until in conn.execute(
                              "SELECT path, op, version, lease_owner, leased_until FROM queue "
                              "WHERE lease_owner IS NOT NULL ORDER BY path")]
            try:
                wait_for(drained, timeout=LEASE_SECONDS + 30, interval=0.1)
            except AssertionError as exc:
                raise AssertionError(f"the queue never drained: {left_over(pg_registry_url)}; "
                                     f"leased as the load ended: {leased}") from exc
            drained_after = time.monotonic() - back_at
            print(f"drained {drained_after:.1f}s after PostgreSQL's last start")

            # No node keeps bytes in files/ that no row names: a DELETE's, a superseded
            # version's (the sweeper drops them). An uploaded file's own bytes may stay there
            # if the outage cut the step after the upload's record (queue/worker.py: "a crash
            # here only leaves the bytes in files/"): the row names them still.
            def orphans() -> list[str]:
                found = []
                with psycopg.connect(pg_registry_url, autocommit=True) as conn:
                    for i, node in enumerate(nodes):
                        for f in (node.data_dir / "files").rglob("*"):
                            if not f.is_file():
                                continue
                            path = str(f.relative_to(node.data_dir / "files"))
                            try:
                                digest = digest_of(f.read_bytes())
                            except FileNotFoundError:
                                continue  # dropped meanwhile
                            row = conn.execute("SELECT sha256, holder FROM files WHERE path = "
                                               "%s", (path,)).fetchone()
                            if row != (digest, f"n{i + 1}"):
                                found.append(f"n{i + 1}: {path} (its row: {row})")
                return found

            try:
                wait_for(lambda: not orphans(), timeout=10, interval=0.1)
            except AssertionError:
                raise AssertionError(f"bytes no row names left in files/: {orphans()}") from None
            print(f"drained after {time.monotonic() - began:.0f}s")

            # Every node serves what was acknowledged last (one outcome of a last write that
            # got a 503, the same on every node); on every other node evicted first, so the
            # read comes from the bucket.
            present, ambiguous = read_everywhere(http, nodes, paths, model)
            print(f"{len(paths)} paths read on every node; {ambiguous} with a last write "
                  "that got a 503")

        # The bucket holds exactly the files there are, each with its bytes.
        s3 = moto.client()
        objects = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"fs/{PREFIX}/") for o in page.get("Contents", [])}
        assert objects == {f"fs/{path}" for path in present}
        for path, digest in present.items():
            stored = s3.get_object(Bucket=bucket, Key=f"fs/{path}")["Body"].read()
            assert digest_of(stored) == digest, (path, model.describe(path, digest_of(stored)))

    outputs = []
    for i, node in enumerate(nodes):
        code, output = node.stop(signal.SIGINT)  # SIGTERM: uvicorn re-raises it
        outputs.append(output)
        assert code == 0, (f"n{i + 1}", code, output[-3000:])
        assert "Traceback" not in output, (f"n{i + 1}", output)
        assert "unexpected error" not in output, (f"n{i + 1}", output)  # CatchUnexpected's 500s

    # No version uploaded by two nodes, nor twice by one, but after the outage cut the first
    # upload's record on that node. Every upload carried its SHA-256: the version it was.
    uploads = [c for c in calls.snapshot()
               if c.key.startswith(f"fs/{PREFIX}/") and (c.put_object or c.completed_multipart)]
    assert all(c.put_object for c in uploads), "multipart uploads: their bytes are not seen"
    assert all(c.sha256 is not None and c.node != "?" for c in uploads), uploads[:5]
    by_version: dict[tuple[str, str | None], list[str]] = collections.defaultdict(list)
    for c in uploads:
        by_version[(c.key, c.sha256)].append(c.node)
    cut = [cut_uploads(output) for output in outputs]
    twice = {version: who for version, who in by_version.items() if len(who) > 1}
    by_two_nodes = {version: who for version, who in twice.items() if len(set(who)) > 1}
    assert by_two_nodes == {}, by_two_nodes
    unexplained = {version: who for version, who in twice.items()
                   if version[0][len("fs/"):] not in cut[int(who[0][1:]) - 1]}
    assert unexplained == {}, unexplained
    # The uploads each node recorded (`upload.done`): at most one per version it sent.
    for i, output in enumerate(outputs):
        sent = collections.Counter(key[len("fs/"):] for key, _ in
                                   {(c.key, c.sha256) for c in uploads if c.node == f"n{i + 1}"})
        done = uploads_done(output)
        assert all(done[path] <= sent[path] for path in done), (f"n{i + 1}", done, sent)
    assert len(uploads) > 20, len(uploads)
    print(f"{len(uploads)} uploads of {len(by_version)} versions ({len(twice)} sent again "
          f"after a cut record)")

    # Work resumes by itself: the uploads too, not only the requests. A node whose upload the
    # outage cut off (it could not give the lease back: "waits for the registry") is alive and
    # knows it works on nothing there; its row must not wait for its 60 s lease to run out,
    # nor the later versions of its path with it (a re-PUT keeps the lease).
    waited = [str(line["message"])[:120] for output in outputs for line in json_lines(output)
              if "waits for the registry" in str(line.get("message", ""))]
    assert drained_after <= DRAIN_SECONDS, (
        f"the queue drained {drained_after:.1f}s after PostgreSQL's last start; leased rows "
        f"as the load ended (path, op, version, owner, seconds left): {leased}; "
        f"the nodes said: {waited}")
    print(f"done after {time.monotonic() - began:.0f}s")


# -- what the load found, each at a chosen moment -------------------------------------------------


def registry_row(url: str, sql: str, *args: Any) -> tuple[Any, ...] | None:
    """One row, read on a connection of the test's own; None while PostgreSQL is away."""
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(url) as conn:
        row = conn.execute(sql, args).fetchone()
        return tuple(row) if row is not None else None
    return None


@pytest.mark.timeout(60)
def test_a_put_the_outage_cut_before_its_rename_leaves_the_file_as_it_was(
        make_server: Callable[..., Any], postgres: PostgresServer, pg_registry_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL goes away after a PUT's intent committed and before its rename (inside the
    install transaction): nothing was installed, the PUT is a 503, and the registry still
    describes the bytes on disk, the last acknowledged PUT's, once the node settled the
    intent left behind (it could not forget it: the registry was away) -- never the cut PUT's
    size and SHA-256 recorded over the older bytes."""
    server = make_server(registry__url=pg_registry_url, cluster__node="n1",
                         cluster__secret=SECRET, upload__delay="1h")
    path = "cut/put.bin"
    old, new = b"acknowledged " * 200, b"never acknowledged"
    halted = threading.Event()
    conflict = FileRows.namespace_conflict

    def halting(rows: FileRows, asked: str) -> str | None:
        if asked == path and not halted.is_set():
            postgres.halt("fast")  # in the install transaction, before the rename
            halted.set()
        return conflict(rows, asked)

    with server.client() as client:
        assert client.put(f"/files/{path}", content=old).status_code == 201
        monkeypatch.setattr(FileRows, "namespace_conflict", halting)
        try:
            answer = client.put(f"/files/{path}", content=new)
        finally:
            if halted.is_set():
                postgres.start()
            monkeypatch.undo()
        assert halted.is_set()
        assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
        assert (server.settings.data_dir / "files" / path).read_bytes() == old
        wait_for(lambda: registry_row(pg_registry_url, "SELECT count(*) FROM intents "
                                      "WHERE path = %s", path) == (0,), timeout=15, interval=0.1)
        assert registry_row(pg_registry_url, "SELECT size, sha256 FROM files WHERE path = %s",
                            path) == (len(old), digest_of(old))
        got = client.get(f"/files/{path}")
        assert (got.status_code, got.content) == (200, old)


@pytest.mark.timeout(60)
def test_a_delete_the_outage_cut_after_its_commit_is_finished_once_the_registry_is_back(
        make_server: Callable[..., Any], postgres: PostgresServer, pg_registry_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL goes away between a DELETE's two transactions: the row is gone (its commit
    came first), the bytes are not, and the DELETE is a 503. Once the registry answers, the
    path is a 404, its bytes go while the node runs (not only at its next start), and a PUT
    of the path works again. (The DELETE's intent stays until the next start: harmless.)"""
    server = make_server(registry__url=pg_registry_url, cluster__node="n1",
                         cluster__secret=SECRET, upload__delay="1h")
    path = "cut/delete.bin"
    deleting, halted = threading.Event(), threading.Event()
    add, get = IntentRows.add, FileRows.get

    def noted(rows: IntentRows, op: str, asked: str, *args: Any, **kwargs: Any) -> int:
        added = add(rows, op, asked, *args, **kwargs)
        if op == "delete" and asked == path:
            deleting.set()  # in the DELETE's first transaction, which commits next
        return added

    def halting(rows: FileRows, asked: str) -> Any:
        if asked == path and deleting.is_set() and not halted.is_set():
            postgres.halt("fast")  # the second transaction's first statement
            halted.set()
        return get(rows, asked)

    with server.client() as client:
        assert client.put(f"/files/{path}", content=b"to be deleted").status_code == 201
        monkeypatch.setattr(IntentRows, "add", noted)
        monkeypatch.setattr(FileRows, "get", halting)
        try:
            answer = client.delete(f"/files/{path}")
        finally:
            if halted.is_set():
                postgres.start()
            monkeypatch.undo()
        assert halted.is_set()
        assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
        wait_for(lambda: client.get(f"/files/{path}").status_code == 404, timeout=15,
                 interval=0.1)
        held = server.settings.data_dir / "files" / path
        wait_for(lambda: not held.exists(), timeout=15, interval=0.1)
        assert client.put(f"/files/{path}", content=b"again").status_code == 201
        assert client.get(f"/files/{path}").content == b"again"


@pytest.mark.timeout(60)
def test_an_upload_the_outage_cut_off_goes_again_once_the_registry_is_back(
        make_server: Callable[..., Any], postgres: PostgresServer, pg_registry_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL goes away as an upload starts: the worker cannot give its lease back (the
    registry is away, "waits for the registry"). The node is alive and knows it works on
    nothing there: once the registry answers, the upload goes again within seconds, as the
    requests and the loops do -- not after its 60 s lease ran out."""
    server = make_server(registry__url=pg_registry_url, cluster__node="n1",
                         cluster__secret=SECRET, upload__delay="0")
    path = "cut/upload.bin"
    answered, halted, given_back = threading.Event(), threading.Event(), threading.Event()
    upload, put_back = worker.QueueWorkers._upload, worker.QueueWorkers._put_back

    async def halting(workers: worker.QueueWorkers, entry: Entry, remote: Remote) -> None:
        if entry.path == path and not halted.is_set():
            await anyio.to_thread.run_sync(answered.wait, 10)  # the PUT went out first
            await anyio.to_thread.run_sync(postgres.halt, "fast")
            halted.set()
        await upload(workers, entry, remote)

    async def told(workers: worker.QueueWorkers, entry: Entry, exc: Any) -> None:
        await put_back(workers, entry, exc)
        if entry.path == path:
            given_back.set()

    monkeypatch.setattr(worker.QueueWorkers, "_upload", halting)
    monkeypatch.setattr(worker.QueueWorkers, "_put_back", told)
    with Lines("filestore.queue") as lines, server.client() as client:
        try:
            assert client.put(f"/files/{path}", content=b"x" * 1000).status_code == 201
            answered.set()
            wait_for(given_back.is_set, timeout=20)
        finally:
            if halted.is_set():
                postgres.start()
        back = time.monotonic()
        assert any(f"upload of {path!r} waits for the registry" in line
                   for line in lines.at(logging.WARNING)), lines.at(logging.WARNING)
        try:
            wait_for(lambda: registry_row(pg_registry_url, "SELECT location FROM files "
                                          "WHERE path = %s", path) == ("remote",),
                     timeout=DRAIN_SECONDS, interval=0.1)
        except AssertionError:
            row = registry_row(pg_registry_url, "SELECT state, attempts, lease_owner, "
                               "round((leased_until - extract(epoch FROM now()))::numeric, 1) "
                               "FROM queue WHERE path = %s", path)
            raise AssertionError(
                f"{path} not uploaded {DRAIN_SECONDS:.0f}s after PostgreSQL started; its "
                f"queue row (state, attempts, lease owner, lease seconds left): {row}") from None
        print(f"uploaded {time.monotonic() - back:.1f}s after PostgreSQL started")
