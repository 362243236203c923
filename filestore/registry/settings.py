"""The settings table: values saved from the admin page, as text (`overrides.py` parses them),
and the two generations every process watches to apply a save within a second."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping

_GENERATIONS = ("settings.generation", "remote.generation")


class SettingRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def all(self) -> list[tuple[str, str, str]]:
        """Every saved (section, key, value)."""
        rows = self._conn.execute("SELECT section, key, value FROM settings").fetchall()
        return [(section, key, value) for section, key, value in rows]

    def generation(self) -> tuple[int, int]:
        """(settings.generation, remote.generation): they move whenever a save changes settings;
        the second only when a remote's settings changed."""
        marks = ", ".join("?" * len(_GENERATIONS))
        rows = dict(self._conn.execute(
            f"SELECT name, value FROM counters WHERE name IN ({marks})", _GENERATIONS).fetchall())
        return rows.get(_GENERATIONS[0], 0), rows.get(_GENERATIONS[1], 0)

    def save(self, texts: Mapping[str, Mapping[str, str]], remote_changed: bool) -> None:
        """Store checked texts {section: {key: text}} and announce the change to every
        process."""
        now = time.time()
        self._conn.executemany(
            "INSERT INTO settings (section, key, value, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (section, key) DO UPDATE SET value = excluded.value, "
            "updated = excluded.updated",
            [(section, key, value, now) for section, values in texts.items()
             for key, value in values.items()],
        )
        announce(self._conn, remote_changed)

    def reset(self) -> int:
        """Forget every saved value (the config file rules again); how many there were."""
        count = self._conn.execute("DELETE FROM settings").rowcount
        announce(self._conn, True)
        return count


def announce(conn: sqlite3.Connection, remote_changed: bool) -> None:
    """Move the generations every process watches: the settings changed (and a remote's, when
    `remote_changed`)."""
    names = _GENERATIONS if remote_changed else _GENERATIONS[:1]
    conn.executemany("UPDATE counters SET value = value + 1 WHERE name = ?",
                     [(name,) for name in names])
