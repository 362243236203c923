"""The account_storage table: the remotes and plan rules an account set for itself, as JSON
(`account_storage.py` parses and checks them; the secrets in it are encrypted there)."""

from __future__ import annotations

import sqlite3
import time

from .settings import announce


class StorageRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, account: str) -> tuple[str, str] | None:
        """(remotes, plan) as stored, or None: the account set none."""
        row = self._conn.execute("SELECT remotes, plan FROM account_storage WHERE account = ?",
                                 (account,)).fetchone()
        return (row[0], row[1]) if row else None

    def all(self) -> list[tuple[str, str, str]]:
        """Every account's (account, remotes, plan), in account order."""
        rows = self._conn.execute(
            "SELECT account, remotes, plan FROM account_storage ORDER BY account").fetchall()
        return [(account, remotes, plan) for account, remotes, plan in rows]

    def save(self, account: str, remotes: str, plan: str, remote_changed: bool) -> None:
        """Store the account's storage (both empty: forget it) and announce the change to
        every process, as a settings save does."""
        if remotes == "{}" and plan == "[]":
            self._conn.execute("DELETE FROM account_storage WHERE account = ?", (account,))
        else:
            self._conn.execute(
                "INSERT INTO account_storage (account, remotes, plan, updated) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET "
                "remotes = excluded.remotes, plan = excluded.plan, updated = excluded.updated",
                (account, remotes, plan, time.time()))
        announce(self._conn, remote_changed)
