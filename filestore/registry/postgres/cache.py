"""The cache index and the cache's pins in PostgreSQL (see `registry/cache.py` and
`registry/pins.py`: dense slots, pinned entries on the negative side, sampled eviction).

Each node has its own cache area, so each has its own entries (keyed by node and path,
migration 13), slots and `cache.*` counters (`node_counters`); the pinned prefixes are the
cluster's, each node pinning what it caches under them. A new entry's slot is the next one of
its side on its node (`max(slot) + 1`, or `min(slot) - 1` pinned), read and written in one
statement, and the triggers of migrations 3, 10 and 13 fill the slot a delete frees: both rely
on no other transaction moving slots meanwhile, which the registry lock guarantees (see
`registry.py`; in SQLite, the single writer). The unique index on (node, slot) would turn a
breach into an error, never into two entries in one slot.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from ..cache import CacheEntry
from ..counters import MAX_CHAR
from ..files import FileRecord
from ..pins import PIN_LIMIT, Pin, outermost
from .files import NODE_VIEW
from .link import Link

_COLUMNS = "path, version, size, last_access, slot < 0"
_NEXT_FREE = ("SELECT greatest(coalesce(max(slot), -1), -1) + 1 FROM cache_entries "
              "WHERE node = %(node)s")
_NEXT_PINNED = ("SELECT least(coalesce(min(slot), 0), 0) - 1 FROM cache_entries "
                "WHERE node = %(node)s")
_NODE_COUNTER = "(SELECT coalesce(max(value), 0) FROM node_counters WHERE node = %(node)s " \
                "AND name = %(counter)s)"


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    return CacheEntry(row[0], row[1], row[2], row[3], bool(row[4]))


class CacheRows:
    """This node's cache index (`node`)."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def add(self, path: str, version: int, size: int, sha256: str, now: float,
            inode: int = 0) -> None:
        node = self._node
        pinned = self._link.value(
            "SELECT EXISTS (SELECT 1 FROM cache_pins WHERE starts_with(%(path)s, prefix)) AND "
            + _NODE_COUNTER.replace("%(counter)s", "'cache.pinned.bytes'") + " + %(size)s <= "
            + _NODE_COUNTER, {"path": path, "size": size, "node": node, "counter": PIN_LIMIT})
        self._link.execute(
            "INSERT INTO cache_entries (node, path, version, size, sha256, last_access, slot, "
            "inode) VALUES (%(node)s, %(path)s, %(version)s, %(size)s, %(sha256)s, %(now)s, "
            f"({_NEXT_PINNED if pinned else _NEXT_FREE}), %(inode)s) "
            "ON CONFLICT (node, path) DO UPDATE SET version = excluded.version, "
            "size = excluded.size, sha256 = excluded.sha256, last_access = excluded.last_access, "
            "inode = CASE WHEN excluded.inode = 0 THEN cache_entries.inode "
            "ELSE excluded.inode END",
            {"node": node, "path": path, "version": version, "size": size, "sha256": sha256,
             "now": now, "inode": inode})

    def remove(self, path: str) -> bool:
        return self._link.count("DELETE FROM cache_entries WHERE node = %s AND path = %s",
                                (self._node, path)) > 0

    def get(self, path: str) -> CacheEntry | None:
        row = self._link.one(f"SELECT {_COLUMNS} FROM cache_entries WHERE node = %s AND "
                             "path = %s", (self._node, path))
        return _entry(row) if row else None

    def touch(self, accesses: Iterable[tuple[float, str]]) -> None:
        self._link.many("UPDATE cache_entries SET last_access = %s WHERE node = %s AND "
                        "path = %s AND last_access < %s",
                        [(when, self._node, path, when) for when, path in accesses])

    def sample(self, count: int, rng: random.Random) -> list[CacheEntry]:
        top = self._link.value("SELECT max(slot) FROM cache_entries WHERE node = %s",
                               (self._node,))
        if top is None or top < 0:
            return []
        slots = sorted({rng.randrange(top + 1) for _ in range(count)})
        return [_entry(row) for row in self._link.rows(
            f"SELECT {_COLUMNS} FROM cache_entries WHERE node = %s AND slot = ANY(%s)",
            (self._node, slots))]

    def page(self, after: str, limit: int) -> list[CacheEntry]:
        return [_entry(row) for row in self._link.rows(
            f"SELECT {_COLUMNS} FROM cache_entries WHERE node = %s AND path > %s "
            "ORDER BY path LIMIT %s", (self._node, after, limit))]

    # -- pins ------------------------------------------------------------------------------------

    def _under(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        return [(row[0], int(row[1])) for row in self._link.rows(
            "SELECT path, slot FROM cache_entries WHERE node = %s AND path >= %s AND path < %s "
            "AND path > %s ORDER BY path LIMIT %s",
            (self._node, prefix, prefix + MAX_CHAR, after, limit))]

    def pin_under(self, prefix: str, after: str, limit: int) -> tuple[int, str | None]:
        page = self._under(prefix, after, limit)
        # One statement per entry, in order (pipelined): each takes the next pinned slot, and
        # its trigger fills the one it left before the next runs.
        self._link.many(f"UPDATE cache_entries SET slot = ({_NEXT_PINNED}) WHERE "
                        "node = %(node)s AND path = %(path)s AND slot >= 0",
                        [{"node": self._node, "path": path} for path, slot in page if slot >= 0])
        return sum(slot >= 0 for _, slot in page), page[-1][0] if len(page) == limit else None

    def unpin_under(self, prefix: str, keep: list[str], after: str,
                    limit: int) -> tuple[int, str | None]:
        page = self._under(prefix, after, limit)
        free = [path for path, slot in page
                if slot < 0 and not any(path.startswith(other) for other in keep)]
        self._link.many(f"UPDATE cache_entries SET slot = ({_NEXT_FREE}) WHERE "
                        "node = %(node)s AND path = %(path)s AND slot < 0",
                        [{"node": self._node, "path": path} for path in free])
        return len(free), page[-1][0] if len(page) == limit else None

    def pinned_under(self, prefix: str) -> tuple[int, int]:
        row = self._link.one(
            "SELECT count(*), coalesce(sum(size), 0)::bigint FROM cache_entries "
            "WHERE node = %s AND path >= %s AND path < %s AND slot < 0",
            (self._node, prefix, prefix + MAX_CHAR))
        assert row is not None
        return int(row[0]), int(row[1])

    def missing_under(self, prefix: str, after: str, limit: int) -> list[FileRecord]:
        rows = self._link.rows(
            f"{NODE_VIEW} WHERE f.path >= %s AND f.path < %s AND f.path > %s "
            "AND f.location = 'remote' AND c.path IS NULL ORDER BY f.path LIMIT %s",
            (self._node, self._node, prefix, prefix + MAX_CHAR, after, limit))
        return [FileRecord(*row) for row in rows]


class PinRows:
    """The cluster's pinned prefixes; the pinned bytes' limit is this node's (`node`)."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def all(self) -> list[Pin]:
        return [Pin(*row) for row in self._link.rows(
            "SELECT prefix, created FROM cache_pins ORDER BY prefix")]

    def get(self, prefix: str) -> Pin | None:
        row = self._link.one("SELECT prefix, created FROM cache_pins WHERE prefix = %s",
                             (prefix,))
        return Pin(*row) if row else None

    def add(self, prefix: str, now: float) -> bool:
        return self._link.count("INSERT INTO cache_pins (prefix, created) VALUES (%s, %s) "
                                "ON CONFLICT DO NOTHING", (prefix, now)) > 0

    def remove(self, prefix: str) -> bool:
        return self._link.count("DELETE FROM cache_pins WHERE prefix = %s", (prefix,)) > 0

    def files_under(self, prefixes: list[str]) -> tuple[int, int]:
        files = size = 0
        for prefix in outermost(prefixes):
            row = self._link.one(
                "SELECT count(*), coalesce(sum(size), 0)::bigint FROM files "
                "WHERE path >= %s AND path < %s", (prefix, prefix + MAX_CHAR))
            assert row is not None
            files, size = files + int(row[0]), size + int(row[1])
        return files, size

    def limit(self) -> int:
        value = self._link.value("SELECT value FROM node_counters WHERE node = %s AND "
                                 "name = %s", (self._node, PIN_LIMIT))
        return int(value) if value is not None else 0

    def set_limit(self, max_size: int) -> None:
        self._link.execute(
            "INSERT INTO node_counters (node, name, value) VALUES (%(node)s, %(name)s, %(v)s) "
            "ON CONFLICT (node, name) DO UPDATE SET value = excluded.value "
            "WHERE node_counters.value != excluded.value",
            {"node": self._node, "name": PIN_LIMIT, "v": max_size})
