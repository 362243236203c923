"""Admin sessions: one row per signed-in browser, so a session can end before its cookie does.

The cookie carries a random session id; the row is keyed by its SHA-256 (a copy of the registry
holds no usable id). A session counts while its row exists, has not expired and belongs to the
current generation (the `sessions.generation` counter): signing out deletes the row, "sign out
everywhere" moves the generation, one row written however many sessions there are. Rows that
ended are pruned at the next sign-in. Checking a session is two primary-key lookups.
"""

from __future__ import annotations

import sqlite3

GENERATION = "sessions.generation"


class SessionRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def start(self, key: str, now: float, expires: float) -> None:
        """Record a session (`key`: the hash of its id) in the current generation, and forget
        the sessions that ended (expired, or of an older generation)."""
        self._conn.execute(
            "DELETE FROM sessions WHERE expires <= ? OR generation <> "
            "(SELECT value FROM counters WHERE name = ?)", (now, GENERATION))
        self._conn.execute(
            "INSERT INTO sessions (id, generation, created, expires) "
            "SELECT ?, value, ?, ? FROM counters WHERE name = ?", (key, now, expires, GENERATION))

    def active(self, key: str, now: float) -> bool:
        """Whether the session `key` still counts."""
        row = self._conn.execute(
            "SELECT 1 FROM sessions JOIN counters ON counters.name = ? "
            "AND counters.value = sessions.generation WHERE sessions.id = ? "
            "AND sessions.expires > ?", (GENERATION, key, now)).fetchone()
        return row is not None

    def count(self, now: float) -> int:
        """The sessions that count now."""
        row = self._conn.execute(
            "SELECT count(*) FROM sessions JOIN counters ON counters.name = ? "
            "AND counters.value = sessions.generation WHERE sessions.expires > ?",
            (GENERATION, now)).fetchone()
        return int(row[0])

    def end(self, key: str) -> bool:
        """End one session; whether it was there."""
        return self._conn.execute("DELETE FROM sessions WHERE id = ?", (key,)).rowcount > 0

    def end_all(self, now: float) -> int:
        """End every session (the generation moves); how many counted."""
        ended = self.count(now)
        self._conn.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (GENERATION,))
        return ended
