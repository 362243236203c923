"""The accounts table (each account owns the path prefix `ID/`) and its tokens.

A token is kept only as its SHA-256: a copy of the registry gives no usable token. Usage is in
counters (`account.ID.*`, kept by triggers, see migration 7), so reading it never scans files.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from .counters import MAX_CHAR
from .settings import announce

_COLUMNS = "id, name, created, state, quota"


@dataclasses.dataclass(frozen=True)
class Account:
    id: str
    name: str
    created: float
    state: str  # "active" | "suspended"
    quota: int  # bytes the account may hold; 0: no limit

    @property
    def prefix(self) -> str:
        """The paths the account owns start with this."""
        return f"{self.id}/"

    @property
    def active(self) -> bool:
        return self.state == "active"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created": self.created,
                "state": self.state, "quota": self.quota}


@dataclasses.dataclass(frozen=True)
class AccountToken:
    """One of an account's tokens, as listed (never the token itself)."""

    account: str
    name: str
    created: float
    last_used: float | None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "last_used": self.last_used}


def usage_counter(account: str, name: str) -> str:
    """The counter of `account`'s usage `name` ("files", "bytes", "local.bytes", "uploads",
    "remote.NAME.bytes")."""
    return f"account.{account}.{name}"


class AccountRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, account: str) -> Account | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM accounts WHERE id = ?",
                                 (account,)).fetchone()
        return Account(*row) if row else None

    def page(self, after: str, limit: int) -> list[Account]:
        """Accounts in id order after `after`."""
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM accounts WHERE id > ? ORDER BY id "
                                  "LIMIT ?", (after, limit)).fetchall()
        return [Account(*row) for row in rows]

    def create(self, account: str, name: str, quota: int, now: float) -> Account:
        """A new active account. Files already under its prefix become its own: their usage is
        counted now (one range scan of the prefix; from here on the triggers keep it)."""
        self._conn.execute("INSERT INTO accounts (id, name, created, state, quota) "
                           "VALUES (?, ?, ?, 'active', ?)", (account, name, now, quota))
        low, high = f"{account}/", f"{account}/{MAX_CHAR}"
        prefix = f"account.{account}."
        self._conn.execute(
            "INSERT INTO counters (name, value) "
            "SELECT ? || 'files', count(*) FROM files WHERE path >= ? AND path < ? "
            "UNION ALL SELECT ? || 'bytes', coalesce(sum(size), 0) FROM files "
            "WHERE path >= ? AND path < ? "
            "UNION ALL SELECT ? || location || '.bytes', sum(size) FROM files "
            "WHERE path >= ? AND path < ? GROUP BY location "
            "UNION ALL SELECT ? || 'remote.' || remote || '.bytes', sum(size) FROM files "
            "WHERE path >= ? AND path < ? AND location = 'remote' AND remote IS NOT NULL "
            "GROUP BY remote "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (prefix, low, high) * 4)
        created = self.get(account)
        assert created is not None
        return created

    def update(self, account: str, *, name: str | None = None, state: str | None = None,
               quota: int | None = None) -> Account | None:
        """Change what is given; the account as it is now (None: there is none)."""
        self._conn.execute(
            "UPDATE accounts SET name = coalesce(?, name), state = coalesce(?, state), "
            "quota = coalesce(?, quota) WHERE id = ?", (name, state, quota, account))
        return self.get(account)

    def delete(self, account: str) -> bool:
        """Forget the account, its tokens, its storage and its usage counters (its files stay
        files)."""
        self._conn.execute("DELETE FROM account_tokens WHERE account = ?", (account,))
        self._conn.execute("DELETE FROM s3_keys WHERE account = ?", (account,))
        self._conn.execute("DELETE FROM s3_buckets WHERE owner = ?", (account,))
        if self._conn.execute("DELETE FROM account_storage WHERE account = ?",
                              (account,)).rowcount:
            announce(self._conn, True)  # every process forgets its remotes and rules
        # "account.ID." .. "account.ID/": exactly this account's counters ('/' follows '.').
        self._conn.execute("DELETE FROM counters WHERE name >= ? AND name < ?",
                           (f"account.{account}.", f"account.{account}/"))
        return self._conn.execute("DELETE FROM accounts WHERE id = ?",
                                  (account,)).rowcount > 0

    def usage(self, account: str) -> dict[str, int]:
        """The account's usage counters by their short names ("files", "bytes", ...)."""
        prefix = f"account.{account}."
        rows = self._conn.execute("SELECT name, value FROM counters WHERE name >= ? AND name < ?",
                                  (prefix, f"account.{account}/")).fetchall()
        return {name[len(prefix):]: value for name, value in rows}


class TokenRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def add(self, account: str, name: str, digest: str, now: float) -> None:
        """Record a token by its SHA-256 (`sqlite3.IntegrityError` if the name is taken)."""
        self._conn.execute("INSERT INTO account_tokens (hash, account, name, created) "
                           "VALUES (?, ?, ?, ?)", (digest, account, name, now))

    def named(self, account: str, name: str) -> AccountToken | None:
        row = self._conn.execute("SELECT account, name, created, last_used FROM account_tokens "
                                 "WHERE account = ? AND name = ?", (account, name)).fetchone()
        return AccountToken(*row) if row else None

    def holder(self, digest: str) -> tuple[Account, str] | None:
        """The account a token (by its SHA-256) belongs to, and the token's name."""
        row = self._conn.execute(
            "SELECT a.id, a.name, a.created, a.state, a.quota, t.name FROM account_tokens t "
            "JOIN accounts a ON a.id = t.account WHERE t.hash = ?", (digest,)).fetchone()
        return (Account(*row[:5]), row[5]) if row else None

    def listing(self, account: str) -> list[AccountToken]:
        rows = self._conn.execute("SELECT account, name, created, last_used FROM account_tokens "
                                  "WHERE account = ? ORDER BY name", (account,)).fetchall()
        return [AccountToken(*row) for row in rows]

    def revoke(self, account: str, name: str) -> bool:
        return self._conn.execute("DELETE FROM account_tokens WHERE account = ? AND name = ?",
                                  (account, name)).rowcount > 0

    def used(self, digests: dict[str, float]) -> None:
        """Record when tokens were last used ({SHA-256: time}), batched by the caller."""
        self._conn.executemany("UPDATE account_tokens SET last_used = ? WHERE hash = ? "
                               "AND (last_used IS NULL OR last_used < ?)",
                               [(when, digest, when) for digest, when in digests.items()])
