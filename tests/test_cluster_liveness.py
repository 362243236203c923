"""How a node is seen alive: its heartbeats go on a thread and, with PostgreSQL, a connection of
their own (never waiting for the registry's pool or lock, reconnected after an outage, the
outage said once), and a peer read (or a replicated PUT) looks again at a node it last saw
dead, which may have come back since (what test_cluster_crash found: a node restarted, PUTs
acknowledged on it, and another node refused to read them for up to a second on its cached
"dead")."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import psycopg
import pytest
from test_pg_outage import Lines

from filestore import cluster
from filestore.cluster import heartbeat, replicas
from filestore.cluster.peers import Peers
from filestore.errors import RegistryUnavailable
from filestore.registry import Node
from filestore.registry.postgres import PostgresRegistry

pytest_plugins = ["pg"]
pytestmark = pytest.mark.timeout(60)


def store_of(registry: Any, *, shared: bool, dead_after: float = 3.0) -> Any:
    return SimpleNamespace(registry=registry, shared=shared, settings=SimpleNamespace(
        node="a", advertise="http://a", cluster=SimpleNamespace(dead_after=dead_after)))


@pytest.fixture
def registries(pg_registry_url: str) -> Iterator[tuple[PostgresRegistry, PostgresRegistry]]:
    a = PostgresRegistry(pg_registry_url, node="a", pool_size=1)
    b = PostgresRegistry(pg_registry_url, node="b", pool_size=1)
    yield a, b
    a.close()
    b.close()


def test_a_beat_waits_for_no_pooled_connection_nor_the_registry_lock(registries):
    a, b = registries
    heart = heartbeat.Heart(store_of(a, shared=True), started=time.time())
    done = threading.Event()

    def beat() -> None:
        heart.beat()
        done.set()

    try:
        # a's only pooled connection taken, and the registry lock held by another node's
        # writer: a transaction of a would wait for both.
        with a.single_write(), b.transaction():
            threading.Thread(target=beat, daemon=True).start()
            assert done.wait(5)
            row = b.read.nodes.get("a")
        assert row is not None and row.url == "http://a" and row.age < 2
    finally:
        heart.close()


def test_the_heartbeat_connection_comes_back_after_the_server_dropped_it(registries,
                                                                        pg_registry_url):
    a, b = registries
    heart = heartbeat.Heart(store_of(a, shared=True), started=time.time())
    try:
        heart.beat()
        assert heart._beats is not None
        pid = heart._beats._link.conn.info.backend_pid
        with psycopg.connect(pg_registry_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(RegistryUnavailable):
            heart.beat()  # the beat that finds it dropped
        before = b.read.nodes.get("a")
        heart.beat()  # on a new connection
        assert heart._beats._link.conn.info.backend_pid != pid
        after = b.read.nodes.get("a")
        assert before is not None and after is not None and after.heartbeat > before.heartbeat
    finally:
        heart.close()


class AwayRegistry:
    """A registry away for its first `away` transactions, then recording each beat."""

    def __init__(self, away: int) -> None:
        self.away = away
        self.beats: list[float] = []
        self.threads: set[str] = set()
        self.nodes = SimpleNamespace(beat=lambda name, url, started: self.beats.append(
            time.monotonic()))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.threads.add(threading.current_thread().name)
        if self.away:
            self.away -= 1
            raise RegistryUnavailable("the registry's PostgreSQL server cannot be reached")
        yield self


def test_the_heartbeat_says_an_outage_once_and_beats_again_by_itself():
    registry = AwayRegistry(away=3)
    store = store_of(registry, shared=False, dead_after=0.3)  # a beat every 0.2 s

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat.beat_every, store)
            with anyio.fail_after(10):
                while len(registry.beats) < 3:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    with Lines("filestore.cluster") as lines:
        anyio.run(run)
    assert len(lines.at(logging.WARNING)) == 1, lines.records
    assert "cluster: the heartbeat failed" in lines.at(logging.WARNING)[0]
    assert lines.at(logging.INFO) == ["cluster: the heartbeat resumed"]
    assert lines.tracebacks == 0
    assert registry.threads == {"filestore-heartbeat"}  # never the event loop's, nor a worker's
    assert not any(t.name == "filestore-heartbeat" for t in threading.enumerate())
    gaps = [b - a for a, b in zip(registry.beats, registry.beats[1:], strict=False)]
    assert all(0.1 < gap < 1.0 for gap in gaps), gaps


@pytest.mark.parametrize("away", [0, 1])
def test_the_node_is_started_once_its_first_beat_was_tried(away):
    """`cluster.run` (which the server awaits before it answers) reports started only after
    the first beat: a node restarted after `dead_after` is alive in the registry before it
    acknowledges a PUT its peers will read from it. A registry away then is not waited out."""
    registry = AwayRegistry(away=away)
    store = store_of(registry, shared=False, dead_after=30.0)  # the next beat 5 s later
    seen: list[int] = []

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(10):
                await tg.start(cluster.run, store)
            seen.append(len(registry.beats))
            tg.cancel_scope.cancel()

    anyio.run(run)
    assert seen == [1 - away]
    assert registry.away == 0  # the one beat it waited for was the failed one


def test_a_holder_last_seen_dead_is_looked_at_again_at_once():
    rows = {"n1": Node("n1", "http://n1", 0.0, 0.0, 0.5),
            "n3": Node("n3", "http://n3", 0.0, 0.0, 5.0)}  # killed: its beats stopped
    reads: list[int] = []

    def every() -> list[Node]:
        reads.append(1)
        return list(rows.values())

    store = store_of(SimpleNamespace(read=SimpleNamespace(nodes=SimpleNamespace(all=every))),
                     shared=True)
    peers = Peers(store)
    assert not peers.nodes(wanted="n3")["n3"].alive(3.0)
    rows["n3"] = Node("n3", "http://n3", 1.0, 1.0, 0.1)  # started again: it beat
    assert peers.nodes(wanted="n3")["n3"].alive(3.0)  # not a second later
    # A holder seen alive, or no node wanted, is not read again within the second.
    assert peers.nodes(wanted="n1")["n1"].alive(3.0)
    peers.nodes()
    assert len(reads) == 2


def test_a_copy_goes_to_a_node_last_seen_dead_that_came_back():
    rows = {"b": Node("b", "http://b", 0.0, 0.0, 5.0)}  # the only other node, down
    store = store_of(SimpleNamespace(read=SimpleNamespace(nodes=SimpleNamespace(
        all=lambda: list(rows.values())))), shared=True)
    peers = Peers(store)
    assert replicas.ranked(store, peers, "x") == []
    rows["b"] = Node("b", "http://b", 1.0, 1.0, 0.1)  # started again: it beat
    assert replicas.ranked(store, peers, "x") == [("b", "http://b")]


def test_every_registry_connection_gives_up_on_a_silent_server(registries, pg_registry_url):
    """A statement to a server cut off without a reset fails after 10 s unacknowledged
    (TCP_USER_TIMEOUT), on the pooled, the reader's and the heartbeat's connections alike,
    rather than after Linux's minutes of retransmits; a URL's own value is kept."""
    a, _ = registries
    heart = heartbeat.Heart(store_of(a, shared=True), started=time.time())
    try:
        heart.beat()
        assert heart._beats is not None
        with a._writable().connection() as pooled:
            conns = [a.read._link.conn, pooled, heart._beats._link.conn]
            assert [c.info.get_parameters().get("tcp_user_timeout") for c in conns] == \
                ["10000"] * 3
    finally:
        heart.close()
    own = PostgresRegistry(pg_registry_url + "?tcp_user_timeout=2500", node="c",
                           read_only=True)
    try:
        assert own.read._link.conn.info.get_parameters()["tcp_user_timeout"] == "2500"
    finally:
        own.close()
