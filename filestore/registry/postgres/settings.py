"""Counters, saved settings and the accounts' own storage in PostgreSQL (see
`registry/counters.py`, `registry/settings.py`, `registry/account_storage.py`).

Counters are rows of `counters` moved by the triggers of the migrations and by a few statements
here, in the transaction of the change they count. A counter is a hot row: every PUT moves
`files`, `bytes` and `seq.version`. Under row locks alone two transactions moving the same
counters in different orders could deadlock; the registry lock (see `registry.py`) runs one write
transaction at a time, as SQLite does, so they never do.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..counters import MAX_CHAR
from ..settings import _GENERATIONS
from .link import Link

# What is counted per node (migration 13): its cache, and its local-only files.
NODE_COUNTED = ("cache.", "local.")


def _per_node(name: str) -> bool:
    return name.startswith(NODE_COUNTED)


class CounterRows:
    """The cluster's counters and, for the names `NODE_COUNTED` starts, this node's (`node`):
    a caller reads `cache.bytes` as in SQLite and gets its own node's."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def all(self) -> dict[str, int]:
        found = {name: int(value) for name, value in self._link.rows(
            "SELECT name, value FROM counters")}
        found.update((name, int(value)) for name, value in self._link.rows(
            "SELECT name, value FROM node_counters WHERE node = %s", (self._node,)))
        return found

    def get(self, name: str) -> int:
        if _per_node(name):
            value = self._link.value("SELECT value FROM node_counters WHERE node = %s AND "
                                     "name = %s", (self._node, name))
        else:
            value = self._link.value("SELECT value FROM counters WHERE name = %s", (name,))
        return int(value) if value is not None else 0

    def with_prefix(self, *prefixes: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for prefix in prefixes:
            if _per_node(prefix):
                rows = self._link.rows(
                    "SELECT name, value FROM node_counters WHERE node = %s AND name >= %s "
                    "AND name < %s", (self._node, prefix, prefix + MAX_CHAR))
            else:
                rows = self._link.rows(
                    "SELECT name, value FROM counters WHERE name >= %s AND name < %s",
                    (prefix, prefix + MAX_CHAR))
            found.update((name, int(value)) for name, value in rows)
        return found

    def add(self, deltas: Mapping[str, int]) -> None:
        moved = sorted((name, delta) for name, delta in deltas.items() if delta)
        self._link.many("UPDATE counters SET value = value + %s WHERE name = %s",
                        [(delta, name) for name, delta in moved if not _per_node(name)])
        self._link.many("SELECT bump_node(%s, %s, %s)",
                        [(self._node, name, delta) for name, delta in moved if _per_node(name)])


def announce(link: Link, remote_changed: bool) -> None:
    """Move the generations every process watches (see `registry/settings.py`)."""
    names = _GENERATIONS if remote_changed else _GENERATIONS[:1]
    link.execute("UPDATE counters SET value = value + 1 WHERE name = ANY(%s)", (list(names),))


class SettingRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def all(self) -> list[tuple[str, str, str]]:
        return [(section, key, value) for section, key, value in self._link.rows(
            "SELECT section, key, value FROM settings")]

    def generation(self) -> tuple[int, int]:
        rows = dict(self._link.rows("SELECT name, value FROM counters WHERE name = ANY(%s)",
                                    (list(_GENERATIONS),)))
        return int(rows.get(_GENERATIONS[0], 0)), int(rows.get(_GENERATIONS[1], 0))

    def save(self, texts: Mapping[str, Mapping[str, str]], remote_changed: bool) -> None:
        now = time.time()
        self._link.many(
            "INSERT INTO settings (section, key, value, updated) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (section, key) DO UPDATE SET value = excluded.value, "
            "updated = excluded.updated",
            [(section, key, value, now) for section, values in texts.items()
             for key, value in values.items()])
        announce(self._link, remote_changed)

    def reset(self) -> int:
        count = self._link.count("DELETE FROM settings")
        announce(self._link, True)
        return count


class StorageRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def get(self, account: str) -> tuple[str, str] | None:
        row = self._link.one("SELECT remotes, plan FROM account_storage WHERE account = %s",
                             (account,))
        return (row[0], row[1]) if row else None

    def all(self) -> list[tuple[str, str, str]]:
        return [(account, remotes, plan) for account, remotes, plan in self._link.rows(
            "SELECT account, remotes, plan FROM account_storage ORDER BY account")]

    def save(self, account: str, remotes: str, plan: str, remote_changed: bool) -> None:
        if remotes == "{}" and plan == "[]":
            self._link.execute("DELETE FROM account_storage WHERE account = %s", (account,))
        else:
            self._link.execute(
                "INSERT INTO account_storage (account, remotes, plan, updated) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (account) DO UPDATE SET "
                "remotes = excluded.remotes, plan = excluded.plan, updated = excluded.updated",
                (account, remotes, plan, time.time()))
        announce(self._link, remote_changed)
