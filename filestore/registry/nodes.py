"""The nodes table (every node sharing the registry, with its heartbeat) and the bytes each
node must drop (`stale_bytes`), see `cluster.py` and migration 13.

In SQLite there is one node, the data directory's: its row is written as a cluster's would be
(so `filestore cluster status` reads alike everywhere), and nothing is ever stale.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    url: str  # where its peers reach it
    started: float
    heartbeat: float  # seconds since the epoch, by the registry's clock
    # Seconds since that heartbeat, by the same clock as it was written by (PostgreSQL's):
    # every node judges the others alike, whatever its own clock says.
    age: float

    def alive(self, dead_after: float) -> bool:
        return self.age < dead_after


@dataclasses.dataclass(frozen=True)
class NodeFigures:
    """What a node holds, from the counters its changes move (never a table scan)."""

    local_files: int  # files whose only bytes are on its disk (not uploaded yet)
    local_bytes: int
    cache_entries: int
    cache_bytes: int
    uploads_in_flight: int  # upload leases its queue workers hold right now


_NODE = "name, url, started, heartbeat"


def _node(row: tuple[str, str, float, float]) -> Node:
    return Node(*row, age=time.time() - row[3])


class NodeRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def beat(self, name: str, url: str, started: float, now: float | None = None) -> None:
        """Record that `name` is alive at `now` (None: the registry's clock, here this
        machine's); its row is created on its first beat."""
        self._conn.execute(
            "INSERT INTO nodes (name, url, started, heartbeat) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET url = excluded.url, started = excluded.started, "
            "heartbeat = max(heartbeat, excluded.heartbeat)",
            (name, url, started, time.time() if now is None else now))

    def get(self, name: str) -> Node | None:
        row = self._conn.execute(f"SELECT {_NODE} FROM nodes WHERE name = ?", (name,)).fetchone()
        return _node(row) if row else None

    def all(self) -> list[Node]:
        return [_node(row) for row in self._conn.execute(
            f"SELECT {_NODE} FROM nodes ORDER BY name").fetchall()]

    def forget(self, name: str) -> bool:
        """Take the node off the list; its per-node rows go with it where there are any
        (PostgreSQL's)."""
        return self._conn.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount > 0

    def figures(self, name: str, now: float) -> NodeFigures:
        """The one node's figures: the whole registry's."""
        values = dict(self._conn.execute(
            "SELECT name, value FROM counters WHERE name IN ('files.local', 'bytes.local', "
            "'cache.entries', 'cache.bytes')").fetchall())
        in_flight = self._conn.execute("SELECT count(*) FROM queue WHERE leased_until > ? AND "
                                       "op = 'upload'", (now,)).fetchone()[0]
        return NodeFigures(values.get("files.local", 0), values.get("bytes.local", 0),
                           values.get("cache.entries", 0), values.get("cache.bytes", 0),
                           int(in_flight))


class StaleRows:
    """Bytes this node must drop. A SQLite registry's one node never has any."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def pending(self, limit: int, after: str = "") -> list[str]:
        return [row[0] for row in self._conn.execute(
            "SELECT path FROM stale_bytes WHERE node = '' AND path > ? ORDER BY path LIMIT ?",
            (after, limit)).fetchall()]

    def remove(self, path: str) -> None:
        self._conn.execute("DELETE FROM stale_bytes WHERE node = '' AND path = ?", (path,))

    def has(self, path: str) -> bool:
        return self._conn.execute("SELECT 1 FROM stale_bytes WHERE node = '' AND path = ?",
                                  (path,)).fetchone() is not None
