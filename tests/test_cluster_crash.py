"""The crash loop across the nodes: three `filestore serve` nodes over one PostgreSQL registry
and one moto bucket, uploads running (`upload.delay` short), while client threads PUT, re-PUT,
DELETE and GET files of 0 B to 2 MiB on random live nodes and a loop kills random nodes with
SIGKILL (at most two down at once) and starts them again after a random short while.

Each client thread has paths of its own, so a path's requests are sequential and "the last
acknowledged write" is well defined. A request the kill cut is "unknown": either outcome is fine
until the path's next acknowledged write settles it.

During the run: no 500 ever; a 200 GET is one whole version PUT at that path, never an older
one than the last acknowledged write (read-after-write on every node, whichever node took the
write: half the acknowledged writes are read back at once on another node), a 404 only when the
last acknowledged write was a DELETE. Connection errors are allowed, and so is a 503 while the
bytes may be on a dead node only; a 503 is not once the last acknowledged write was a DELETE (no
row: nothing to read from anywhere), nor while the node that took the last acknowledged PUT has
been up ever since. At random moments the counters the triggers keep equal a recount of the
rows, in one snapshot.

After the loop, with every node up again: every file uploaded, every node serves exactly what
was acknowledged last (from its cache or, evicted, from the bucket), the bucket holds exactly
those files, the counters equal a recount, `filestore verify` is clean on every node, and no
node ever printed a traceback. A failed run leaves each node's output (every life) and a journal
of every request, kill and start in its tmp_path.

The second test is what the loop found, made at a chosen moment: a node's recovery recording a
PUT the kill cut over a later write another node acknowledged.

Reproduce a run's schedule with `FILESTORE_CLUSTER_CRASH_SEED=<seed>` (printed at the start);
the timing still differs between runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import Moto, ServeProcess, s3_overrides, wait_for
from test_registry_contract import recount

from filestore.registry.postgres import PostgresRegistry

pytest_plugins = ["pg"]

SEED = int(os.environ.get("FILESTORE_CLUSTER_CRASH_SEED", "20250301"))
TOKEN = "cluster-crash-token-0123456789abcdef"
SECRET = "cluster-crash-secret-0123456789abcdef"
NODES = 3
MAX_DOWN = 2
CLIENTS = 4
PATHS_PER_CLIENT = 5
RUN_SECONDS = 30.0
MiB = 1024 * 1024
GONE = None  # the state of a path that holds no file
SHARED_COUNTERS = ("files", "bytes", "files.local", "bytes.local", "files.remote",
                   "bytes.remote")


def size_for(rng: random.Random) -> int:
    """Some empty files, mostly small ones, some up to 2 MiB (several peer-read chunks)."""
    roll = rng.random()
    if roll < 0.08:
        return 0
    if roll < 0.70:
        return rng.randint(16, 64 * 1024)
    return rng.randint(64 * 1024, 2 * MiB)


def body_of(path: str, generation: int, size: int) -> bytes:
    """Generation `generation` of `path`: bytes no other path or generation has (but the
    empty body, which all empty versions share)."""
    seed = int.from_bytes(hashlib.sha256(f"{path}#{generation}".encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Model:
    """What each path may hold now: the SHA-256 of each body it may have, or GONE. An
    acknowledged write leaves one possibility; a write with no answer (its node died) adds its
    outcome to the ones there were. Reads never narrow it (a cut PUT's fate is known for sure
    only at the path's next acknowledged write)."""

    def __init__(self, paths: list[str]) -> None:
        self.states: dict[str, set[str | None]] = {path: {GONE} for path in paths}
        self.versions: dict[str, tuple[str, int]] = {}  # every body PUT: digest -> (path, gen)
        # The node that took the last acknowledged PUT and its life then (None: a DELETE,
        # or not known): while that life lasts, the bytes can be read from it.
        self.holders: dict[str, tuple[int, int] | None] = {path: None for path in paths}
        self._lock = threading.Lock()

    def sent(self, path: str, generation: int, digest: str) -> None:
        with self._lock:
            self.versions.setdefault(digest, (path, generation))

    def settle(self, path: str, outcome: str | None,
               holder: tuple[int, int] | None = None) -> None:
        with self._lock:
            self.states[path] = {outcome}
            self.holders[path] = holder

    def maybe(self, path: str, outcome: str | None) -> None:
        with self._lock:
            self.states[path].add(outcome)

    def possible(self, path: str) -> set[str | None]:
        with self._lock:
            return set(self.states[path])

    def holder(self, path: str) -> tuple[int, int] | None:
        with self._lock:
            return self.holders[path]

    def generation(self, path: str, digest: str) -> int | None:
        with self._lock:
            known = self.versions.get(digest)
        return known[1] if known is not None and known[0] == path else None

    def describe(self, path: str, digest: str) -> str:
        with self._lock:
            known = self.versions.get(digest)
        if known is None:
            return "bytes no client ever PUT (torn or mixed)"
        if known[0] != path:
            return f"the bytes of another path: {known[0]!r} generation {known[1]}"
        return f"generation {known[1]} of this path, older than its last acknowledged write"


@dataclasses.dataclass
class Tally:
    """What the clients saw, for the report (and the failures, for the assertion), and a
    journal of every request and kill, saved with the nodes' output to read after a failure."""

    statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    journal: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def count(self, what: str, where: str, note: str = "") -> None:
        with self.lock:
            self.statuses[what] += 1
            self.journal.append(f"{time.time():.3f} {where}: {what} {note}")

    def note(self, what: str) -> None:
        with self.lock:
            self.journal.append(f"{time.time():.3f} {what}")

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)
            self.journal.append(f"{time.time():.3f} FAILED: {what}")

    def read(self, model: Model, where: str, path: str, r: httpx.Response,
             possible: set[str]) -> bool:
        """Count a GET's answer and judge a 200 (one whole version the path may hold, its
        ETag its SHA-256) or a 404 (the path may be gone) against `possible`; False for any
        other status, which the caller judges."""
        digest = digest_of(r.content)
        seen = model.generation(path, digest) if r.status_code == 200 else None
        self.count(f"get: {r.status_code}", where, f"generation {seen}" if seen is not None else "")
        if r.status_code == 200:
            if r.headers.get("etag") != f'"{digest}"':
                self.fail(f"{where}: {len(r.content)} bytes whose SHA-256 is not its "
                          f"ETag {r.headers.get('etag')}: torn or mixed")
            if digest not in possible:
                self.fail(f"{where}: 200 with {model.describe(path, digest)} "
                          f"(possible: {possible})")
        elif r.status_code == 404:
            if GONE not in possible:
                self.fail(f"{where}: 404, but its last acknowledged write was a PUT")
        else:
            return False
        return True


class Nodes:
    """The three nodes, which of them are up (the clients pick among these) and every output
    each node printed in all its lives."""

    def __init__(self, nodes: list[ServeProcess], tally: Tally) -> None:
        self.nodes = nodes
        self.tally = tally
        self.up = set(range(len(nodes)))
        self.lives = [0] * len(nodes)  # kills so far: a node's life is its count of them
        self.outputs: list[list[str]] = [[] for _ in nodes]
        self.lock = threading.Lock()

    def live(self) -> list[int]:
        with self.lock:
            return sorted(self.up)

    def life(self, i: int) -> int:
        with self.lock:
            return self.lives[i]

    def kill(self, i: int) -> None:
        with self.lock:
            self.up.discard(i)
            self.lives[i] += 1  # first: a request the kill may cut sees its life change
        self.tally.note(f"killing n{i + 1}")
        self.nodes[i].kill()
        self.outputs[i].append("".join(self.nodes[i].output))

    def start(self, i: int) -> None:
        self.tally.note(f"starting n{i + 1}")
        self.nodes[i].start()
        with self.lock:
            self.up.add(i)
        self.tally.note(f"n{i + 1} is up")

    def stop(self, i: int) -> int:
        code, output = self.nodes[i].stop(signal.SIGINT)  # SIGTERM: uvicorn re-raises it
        self.outputs[i].append(output)
        with self.lock:
            self.up.discard(i)
        return code

    def save(self, directory: Path) -> None:
        """Every life's output of each node in `directory`/n<i>.log, to read after a failure
        (a node still running, or killed by the fixture, adds its current life's)."""
        for i, node in enumerate(self.nodes):
            lives = list(self.outputs[i])
            if i in self.up and node.proc is not None:
                lives.append("".join(getattr(node, "output", [])))
            (directory / f"n{i + 1}.log").write_text("".join(
                f"==== life {life + 1} ====\n{output}" for life, output in enumerate(lives)))
        with self.tally.lock:
            (directory / "journal.txt").write_text("\n".join(self.tally.journal) + "\n")


class Client(threading.Thread):
    """PUT, re-PUT, DELETE and GET of its own paths, each on a random live node, until told to
    stop; it checks every answer against the model."""

    def __init__(self, number: int, paths: list[str], nodes: Nodes, model: Model,
                 tally: Tally, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"client-{number}")
        self.rng = random.Random(SEED * 100 + number)
        self.paths, self.nodes, self.model, self.tally, self.stop = (paths, nodes, model,
                                                                     tally, stop)
        self.generation = collections.Counter[str]()
        self.http = httpx.Client(timeout=30, headers={"authorization": f"Bearer {TOKEN}"})
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.http:
                while not self.stop.is_set():
                    live = self.nodes.live()
                    if not live:
                        time.sleep(0.01)  # all down: cannot happen with MAX_DOWN < NODES
                        continue
                    node = self.rng.choice(live)
                    path = self.rng.choice(self.paths)
                    roll = self.rng.random()
                    kind = "put" if roll < 0.35 else "delete" if roll < 0.47 else "get"
                    if self._do(kind, node, path) and self.rng.random() < 0.5:
                        # Read it back at once, on another node if one is up.
                        others = [i for i in self.nodes.live() if i != node] or [node]
                        self._do("get", self.rng.choice(others), path)
        except BaseException as exc:  # a bug of the test itself: said at the end
            self.error = exc

    def _do(self, kind: str, node: int, path: str) -> bool:
        """One request; whether it was a write the server acknowledged."""
        url = f"{self.nodes.nodes[node].url}/files/{path}"
        where = f"{kind.upper()} {path} on n{node + 1}"
        if kind == "put":
            self.generation[path] += 1
            generation = self.generation[path]
            body = body_of(path, generation, size_for(self.rng))
            digest = digest_of(body)
            self.model.sent(path, generation, digest)
            note = f"generation {generation} ({len(body)} B)"
            life = self.nodes.life(node)
            try:
                r = self.http.put(url, content=body)
            except httpx.ConnectError:
                # Never reached a server: nothing happened.
                self.tally.count("put: refused", where, note)
                return False
            except httpx.TransportError:
                self.tally.count("put: cut", where, note)
                self.model.maybe(path, digest)
                return False
            self.tally.count(f"put: {r.status_code}", where, note)
            if r.status_code in (200, 201):
                if r.json().get("sha256") != digest:
                    self.tally.fail(f"{where}: acknowledged with the SHA-256 "
                                    f"{r.json().get('sha256')}, not the body's {digest}")
                # Held by that node's life, unless a kill came between (then: not known).
                self.model.settle(path, digest,
                                  (node, life) if self.nodes.life(node) == life else None)
                return True
            elif r.status_code == 503:
                self.model.maybe(path, digest)
            else:
                self.tally.fail(f"{where}: {r.status_code} {r.text[:300]}")
                self.model.maybe(path, digest)
        elif kind == "delete":
            before = self.model.possible(path)
            try:
                r = self.http.delete(url)
            except httpx.ConnectError:
                self.tally.count("delete: refused", where)
                return False
            except httpx.TransportError:
                self.tally.count("delete: cut", where)
                self.model.maybe(path, GONE)
                return False
            self.tally.count(f"delete: {r.status_code}", where)
            if r.status_code in (204, 404):
                if r.status_code == 404 and GONE not in before:
                    self.tally.fail(f"{where}: 404, but its last acknowledged write was a PUT")
                self.model.settle(path, GONE)
                return True
            elif r.status_code == 503:
                self.model.maybe(path, GONE)
            else:
                self.tally.fail(f"{where}: {r.status_code} {r.text[:300]}")
                self.model.maybe(path, GONE)
        else:
            possible = self.model.possible(path)  # no write of this path runs meanwhile
            holder = self.model.holder(path)
            try:
                r = self.http.get(url)
            except httpx.TransportError as exc:  # refused, or cut mid-body: never a short 200
                self.tally.count(f"get: {type(exc).__name__}", where)
                return False
            if self.tally.read(self.model, where, path, r, possible):
                pass
            elif r.status_code == 503:
                if not r.headers.get("retry-after"):
                    self.tally.fail(f"{where}: 503 without Retry-After: {r.text[:300]}")
                if possible == {GONE}:
                    # No row: every node answers 404 from the registry alone, asking no other
                    # node and no bucket. A 503 means a row came back (a resurrected file).
                    self.tally.fail(f"{where}: 503 though its last acknowledged write was a "
                                    f"DELETE (no file to read from anywhere): {r.text[:300]}")
                elif (len(possible) == 1 and holder is not None
                      and self.nodes.life(holder[0]) == holder[1]):
                    # The node that took the last acknowledged PUT has held its bytes and
                    # beaten ever since: they can be read from it (or from the bucket).
                    self.tally.fail(f"{where}: 503 though n{holder[0] + 1}, which took its "
                                    f"last acknowledged PUT, has been up ever since: "
                                    f"{r.text[:300]}")
            else:
                self.tally.fail(f"{where}: {r.status_code} {r.text[:300]}")
        return False


def read_everywhere(http: httpx.Client, nodes: Sequence[ServeProcess], paths: Sequence[str],
                    model: Model) -> tuple[dict[str, str], int]:
    """Read every path on every node, on every other node its cached copy evicted first (the
    read comes from the bucket): each answer is one of the path's possible outcomes, the same
    on every node. The paths present with their digests, and how many had more than one
    possible outcome (a cut last write)."""
    present: dict[str, str] = {}
    ambiguous = 0
    for k, path in enumerate(paths):
        possible = model.possible(path)
        ambiguous += len(possible) > 1
        seen = set()
        for i, node in enumerate(nodes):
            if (k + i) % 2:
                evicted = http.post(f"{node.url}/admin/api/files/{path}/evict")
                assert evicted.status_code in (200, 404), (path, evicted.text)
            r = http.get(f"{node.url}/files/{path}")
            assert r.status_code in (200, 404), (path, f"n{i + 1}", r.status_code, r.text)
            outcome = digest_of(r.content) if r.status_code == 200 else GONE
            assert outcome in possible, (path, f"n{i + 1}", possible,
                                         outcome and model.describe(path, outcome))
            seen.add(outcome)
        assert len(seen) == 1, (path, seen)
        if outcome is not GONE:
            present[path] = outcome
    return present, ambiguous


# -- the registry, seen by the test ---------------------------------------------------------------


def counted_in_one_snapshot(conn: psycopg.Connection[Any]) -> tuple[dict[str, int],
                                                                   dict[str, int]]:
    """The counters the triggers keep and the same figures counted from the rows, in one
    snapshot: they change in the same transactions as the rows, so no moment (and no kill)
    may set them apart."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        kept = {name: int(value) for name, value in conn.execute(
            "SELECT name, value FROM counters WHERE name = ANY(%s) OR name LIKE 'queue.%%'",
            (list(SHARED_COUNTERS),))}
        kept.update({f"{node}:{name}": int(value) for node, name, value in conn.execute(
            "SELECT node, name, value FROM node_counters WHERE name IN ('local.files', "
            "'local.bytes', 'cache.entries', 'cache.bytes')")})
        counted: dict[str, int] = {}
        for location, files, size in conn.execute(
                "SELECT location, count(*), coalesce(sum(size), 0) FROM files GROUP BY location"):
            for name, value in ((f"files.{location}", files), (f"bytes.{location}", size)):
                counted[name] = int(value)
            counted["files"] = counted.get("files", 0) + int(files)
            counted["bytes"] = counted.get("bytes", 0) + int(size)
        for op, state, number in conn.execute(
                "SELECT op, state, count(*) FROM queue GROUP BY op, state"):
            counted[f"queue.{op}.{state}"] = int(number)
        for holder, files, size in conn.execute(
                "SELECT holder, count(*), sum(size) FROM files WHERE location = 'local' "
                "GROUP BY holder"):
            counted[f"{holder}:local.files"] = int(files)
            counted[f"{holder}:local.bytes"] = int(size)
        for node, entries, size in conn.execute(
                "SELECT node, count(*), sum(size) FROM cache_entries GROUP BY node"):
            counted[f"{node}:cache.entries"] = int(entries)
            counted[f"{node}:cache.bytes"] = int(size)
    return kept, counted


def differences(kept: dict[str, int], counted: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Each figure where the counter and the recount differ: (kept, counted); a missing row
    counts as 0. `queue.*` counters of kinds this run never made are 0 either way."""
    names = set(kept) | set(counted)
    return {n: (kept.get(n, 0), counted.get(n, 0)) for n in sorted(names)
            if kept.get(n, 0) != counted.get(n, 0)}


def settled(conn: psycopg.Connection[Any]) -> bool:
    """No queued work (uploads, remote deletes) and no stale bytes left to drop."""
    queue = conn.execute("SELECT count(*) FROM queue").fetchone()
    stale = conn.execute("SELECT count(*) FROM stale_bytes").fetchone()
    return bool(queue and stale and queue[0] == 0 and stale[0] == 0)


# -- the test -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)  # about a minute and a half; more on a loaded machine
def test_kill_9_across_the_nodes_loses_nothing_acknowledged(
        serve_process: Any, tmp_path: Path, pg_registry_url: str, moto: Moto, bucket: str,
        request: pytest.FixtureRequest) -> None:
    print(f"cluster crash loop seed: {SEED} (FILESTORE_CLUSTER_CRASH_SEED={SEED} to run its "
          "schedule again)")
    began = time.monotonic()
    rng = random.Random(SEED)
    overrides = {**s3_overrides(moto, bucket), "registry__url": pg_registry_url,
                 "cluster__secret": SECRET, "cluster__dead_after": "3s",
                 "auth__token": TOKEN, "upload__delay": "1s", "upload__concurrency": "3",
                 "upload__retry_base": "0.05s", "upload__retry_max": "0.5s",
                 "upload__max_attempts": "1000", "upload__delete_delay": "0s",
                 "cache__min_free": "0"}
    tally = Tally()
    nodes = Nodes([serve_process(tmp_path / f"n{i}", cluster__node=f"n{i}", **overrides)
                   for i in range(1, NODES + 1)], tally)
    request.addfinalizer(lambda: nodes.save(tmp_path))
    print(f"each node's output, every life of it: {tmp_path}/n<i>.log")
    for node in nodes.nodes:  # one at a time: the first migrates (the template is migrated)
        node.start()
    paths = [f"cc/t{t}/p{i}.bin" for t in range(CLIENTS) for i in range(PATHS_PER_CLIENT)]
    model, stop = Model(paths), threading.Event()
    clients = [Client(t, [p for p in paths if p.startswith(f"cc/t{t}/")], nodes, model, tally,
                      stop) for t in range(CLIENTS)]
    snapshots = kills = 0
    with contextlib.closing(psycopg.connect(pg_registry_url, autocommit=True)) as conn:
        for client in clients:
            client.start()
        try:
            # The kill loop: at random moments, kill a random live node (keeping one up at
            # least) and bring it back after a random short while.
            back_at: dict[int, float] = {}
            end = time.monotonic() + RUN_SECONDS
            while time.monotonic() < end and not tally.failures:
                time.sleep(rng.uniform(0.1, 1.2))  # the random moment, not a wait for anything
                now = time.monotonic()
                for i in sorted(i for i, when in back_at.items() if when <= now):
                    nodes.start(i)
                    del back_at[i]
                if len(back_at) < MAX_DOWN and rng.random() < 0.6:
                    victim = rng.choice(nodes.live())
                    nodes.kill(victim)
                    kills += 1
                    back_at[victim] = time.monotonic() + rng.uniform(0.3, 5.0)
                if rng.random() < 0.5:
                    kept, counted = counted_in_one_snapshot(conn)
                    assert differences(kept, counted) == {}, (kept, counted)
                    snapshots += 1
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=60)
        assert not any(c.is_alive() for c in clients), "a client hangs"
        for client in clients:
            if client.error is not None:
                raise client.error
        assert tally.failures == [], "\n".join(tally.failures[:20])
        print(f"{kills} kills in {time.monotonic() - began:.0f}s, {snapshots} counter snapshots; "
              f"answers: {dict(sorted(tally.statuses.items()))}")
        assert tally.statuses["put: 200"] + tally.statuses["put: 201"] > 50
        assert tally.statuses["get: 200"] > 20 and tally.statuses["delete: 204"] > 5

        # Every node up again and seen alive by the others.
        for i in sorted(set(range(NODES)) - set(nodes.live())):
            nodes.start(i)
        with httpx.Client(base_url=nodes.nodes[0].url, timeout=30,
                          headers={"authorization": f"Bearer {TOKEN}"}) as admin:
            wait_for(lambda: all(n["alive"] for n in admin.get("/admin/api/cluster").json()[
                "nodes"]), timeout=15)

            # Every file uploaded, every remote delete done, every stale byte dropped.
            def uploaded() -> bool:
                for path in paths:
                    r = admin.get(f"/admin/api/files/{path}")
                    if r.status_code == 200 and r.json()["location"] != "remote":
                        return False
                    assert r.status_code in (200, 404), (path, r.status_code, r.text)
                return settled(conn)

            wait_for(uploaded, timeout=60, interval=0.1)
        print(f"uploaded after {time.monotonic() - began:.0f}s")

        # Every node serves exactly what was acknowledged last (or, for a path whose last
        # write was cut, one of its possible outcomes, the same on every node): on every other
        # node, its cached copy evicted first, so the read comes from the bucket.
        http = httpx.Client(timeout=60, headers={"authorization": f"Bearer {TOKEN}"})
        with http:
            present, ambiguous = read_everywhere(http, nodes.nodes, paths, model)
        print(f"{len(paths)} paths read on every node; {ambiguous} with a cut last write")

        # The bucket holds exactly the files there are, each with its bytes: every DELETE's
        # remote delete ran, and no older version's upload landed after a newer one's.
        s3 = moto.client()
        objects = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="fs/") for o in page.get("Contents", [])}
        assert set(objects) == {f"fs/{path}" for path in present}
        for path, digest in present.items():
            stored = s3.get_object(Bucket=bucket, Key=f"fs/{path}")["Body"].read()
            assert digest_of(stored) == digest, (path, model.describe(path, digest_of(stored)))

        # The counters equal a recount: the cluster's, through the registry's own reads ...
        registry = PostgresRegistry(pg_registry_url, pool_size=1)
        try:
            counted = recount(registry)
            kept = {name: registry.read.counters.get(name) for name in SHARED_COUNTERS}
            assert kept == {name: counted.get(name, 0) for name in SHARED_COUNTERS}
            assert kept["files"] == kept["files.remote"]
            # ... and each node's local-only files, on the registry's reader connection.
            link = registry.read._link
            per_node = dict(link.rows("SELECT node, value FROM node_counters "
                                      "WHERE name = 'local.files'"))
            held = dict(link.rows("SELECT holder, count(*) FROM files WHERE location = 'local' "
                                  "GROUP BY holder"))
            assert {n: int(v) for n, v in per_node.items() if v} == {
                h: int(v) for h, v in held.items()}
        finally:
            registry.close()
        kept, counted = counted_in_one_snapshot(conn)
        assert differences(kept, counted) == {}

    # `filestore verify` on every node, each with its own config, at once.
    def verify(node: ServeProcess) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "filestore", "verify"], env=node.env,
                              capture_output=True, text=True, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(NODES) as pool:
        for i, done in enumerate(pool.map(verify, nodes.nodes)):
            assert done.returncode == 0, (f"n{i + 1}", done.stdout + done.stderr)

    for i in range(NODES):
        code = nodes.stop(i)
        assert code == 0, (f"n{i + 1}", code, nodes.outputs[i][-1])
    for i, lives in enumerate(nodes.outputs):
        for life, output in enumerate(lives):
            assert "Traceback" not in output, (f"n{i + 1}, life {life + 1}", output)
    print(f"done after {time.monotonic() - began:.0f}s")


@pytest.mark.timeout(60)
def test_a_restarted_node_records_no_cut_put_over_a_later_acknowledged_write(
        serve_process: Any, tmp_path: Path, pg_registry_url: str, moto: Moto,
        bucket: str) -> None:
    """The crash loop's finding, at a chosen moment: a node killed between a PUT's rename and
    its commit leaves the PUT's intent and the new bytes in its files/ (what `_commit_put`
    leaves then; made here by hand, as the killed process would have). The client got no
    answer, wrote the path again on another node and was acknowledged: when the killed node
    starts again, its recovery must not record the unacknowledged bytes over that write."""
    overrides = {**s3_overrides(moto, bucket), "registry__url": pg_registry_url,
                 "cluster__secret": SECRET, "cluster__dead_after": "3s",
                 "auth__token": TOKEN, "upload__delay": "1h"}
    n1, n2 = (serve_process(tmp_path / name, cluster__node=name, **overrides).start()
              for name in ("n1", "n2"))
    http = httpx.Client(timeout=30, headers={"authorization": f"Bearer {TOKEN}"})
    cut = b"the PUT the kill cut" * 100
    with http:
        assert http.put(f"{n2.url}/files/r/deleted.bin", content=b"first").status_code == 201
        n1.kill()
        registry = PostgresRegistry(pg_registry_url, node="n1", pool_size=1)
        try:
            for path in ("r/overwritten.bin", "r/deleted.bin"):
                with registry.transaction() as tx:  # the intent, committed before the rename
                    tx.intents.add("put", path, str(n1.data_dir / "tmp" / f"put-{path[2:]}"),
                                   len(cut), digest_of(cut), "application/octet-stream")
                installed = n1.data_dir / "files" / path  # the rename: the temp file is gone
                installed.parent.mkdir(parents=True, exist_ok=True)
                installed.write_bytes(cut)
        finally:
            registry.close()
        # No answer came: the client writes again, on n2, and n2 acknowledges.
        newer = b"acknowledged later, on n2" * 100
        assert http.put(f"{n2.url}/files/r/overwritten.bin", content=newer).status_code == 201
        assert http.delete(f"{n2.url}/files/r/deleted.bin").status_code == 204

        n1.start()  # its recovery runs before it answers /healthz
        for node in (n1, n2):
            answer = http.get(f"{node.url}/files/r/overwritten.bin")
            assert (answer.status_code, answer.content[:40]) == (200, newer[:40])
            assert http.get(f"{node.url}/files/r/deleted.bin").status_code == 404
    code, output = n1.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in output, output
    n2.stop(signal.SIGINT)
