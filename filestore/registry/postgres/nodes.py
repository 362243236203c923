"""The nodes table and the bytes each node must drop, in PostgreSQL (see `registry/nodes.py`
and migration 13): here several nodes share them, and a node's figures are its own counters
(`node_counters`) and its queue workers' leases."""

from __future__ import annotations

from ..nodes import Node, NodeFigures
from .link import Link

# The age by the server's clock, as the beat (see `Node.age`).
_NODE = "name, url, started, heartbeat, extract(epoch FROM clock_timestamp()) - heartbeat"
_NOW = "extract(epoch FROM clock_timestamp())"


class NodeRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def beat(self, name: str, url: str, started: float, now: float | None = None) -> None:
        """`now`: None for the server's clock, the one every node's beat is written by."""
        self._link.execute(
            "INSERT INTO nodes (name, url, started, heartbeat) VALUES "
            f"(%s, %s, %s, coalesce(%s, {_NOW})) "
            "ON CONFLICT (name) DO UPDATE SET url = excluded.url, started = excluded.started, "
            "heartbeat = greatest(nodes.heartbeat, excluded.heartbeat)",
            (name, url, started, now))

    def get(self, name: str) -> Node | None:
        row = self._link.one(f"SELECT {_NODE} FROM nodes WHERE name = %s", (name,))
        return Node(*row) if row else None

    def all(self) -> list[Node]:
        return [Node(*row) for row in self._link.rows(f"SELECT {_NODE} FROM nodes ORDER BY name")]

    def forget(self, name: str) -> bool:
        """The node's row and its cache index (its `cache.*` counters go to 0 with it; its
        cached copies are dropped by its own start if it ever comes back, `reconcile`
        without adopting). Its stale rows, intents and held files stay: they say what to
        drop, to recover and to serve on its disk then."""
        self._link.execute("DELETE FROM cache_entries WHERE node = %s", (name,))
        return self._link.count("DELETE FROM nodes WHERE name = %s", (name,)) > 0

    def figures(self, name: str, now: float) -> NodeFigures:
        values = dict(self._link.rows(
            "SELECT name, value FROM node_counters WHERE node = %s AND name = ANY(%s)",
            (name, ["local.files", "local.bytes", "cache.entries", "cache.bytes"])))
        # Leases are few (workers x concurrency per process) and found by their index.
        in_flight = self._link.value(
            "SELECT count(*) FROM queue WHERE leased_until > %s AND op = 'upload' "
            "AND starts_with(lease_owner, %s)", (now, name + ":"))
        return NodeFigures(int(values.get("local.files", 0)), int(values.get("local.bytes", 0)),
                           int(values.get("cache.entries", 0)),
                           int(values.get("cache.bytes", 0)), int(in_flight or 0))


class Heartbeats:
    """This node's beats on a link of their own (`PostgresRegistry.open_heartbeats`): the
    same row as `NodeRows.beat` writes, by the server's clock."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._rows = NodeRows(link)

    def beat(self, name: str, url: str, started: float) -> None:
        self._rows.beat(name, url, started)

    def close(self) -> None:
        self._link.close()


class StaleRows:
    """Bytes this node (`node`) must drop."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def pending(self, limit: int, after: str = "") -> list[str]:
        return [row[0] for row in self._link.rows(
            "SELECT path FROM stale_bytes WHERE node = %s AND path > %s ORDER BY path LIMIT %s",
            (self._node, after, limit))]

    def remove(self, path: str) -> None:
        self._link.execute("DELETE FROM stale_bytes WHERE node = %s AND path = %s",
                           (self._node, path))

    def has(self, path: str) -> bool:
        return self._link.one("SELECT 1 FROM stale_bytes WHERE node = %s AND path = %s",
                              (self._node, path)) is not None
