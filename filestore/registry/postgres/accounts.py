"""Accounts and their tokens in PostgreSQL (see `registry/accounts.py`).

An account's usage counters (`account.ID.*`) are kept by the triggers of migration 7; creating an
account counts what already lies under its prefix in the same transaction (one range scan).
Creating an account or a token checks that the id or name is free and then inserts: the
registry lock (see `registry.py`) keeps another transaction from taking it in between; the
primary keys would refuse a duplicate regardless (`psycopg.errors.UniqueViolation`).
"""

from __future__ import annotations

from ..accounts import _COLUMNS, Account, AccountToken
from ..counters import MAX_CHAR
from .link import Link
from .settings import announce


class AccountRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def get(self, account: str) -> Account | None:
        row = self._link.one(f"SELECT {_COLUMNS} FROM accounts WHERE id = %s", (account,))
        return Account(*row) if row else None

    def page(self, after: str, limit: int) -> list[Account]:
        return [Account(*row) for row in self._link.rows(
            f"SELECT {_COLUMNS} FROM accounts WHERE id > %s ORDER BY id LIMIT %s",
            (after, limit))]

    def create(self, account: str, name: str, quota: int, now: float) -> Account:
        self._link.execute("INSERT INTO accounts (id, name, created, state, quota) "
                           "VALUES (%s, %s, %s, 'active', %s)", (account, name, now, quota))
        low, high = f"{account}/", f"{account}/{MAX_CHAR}"
        prefix = f"account.{account}."
        self._link.execute(
            "INSERT INTO counters (name, value) "
            "SELECT %s || 'files', count(*) FROM files WHERE path >= %s AND path < %s "
            "UNION ALL SELECT %s || 'bytes', coalesce(sum(size), 0) FROM files "
            "WHERE path >= %s AND path < %s "
            "UNION ALL SELECT %s || location || '.bytes', sum(size) FROM files "
            "WHERE path >= %s AND path < %s GROUP BY location "
            "UNION ALL SELECT %s || 'remote.' || remote || '.bytes', sum(size) FROM files "
            "WHERE path >= %s AND path < %s AND location = 'remote' AND remote IS NOT NULL "
            "GROUP BY remote "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (prefix, low, high) * 4)
        created = self.get(account)
        assert created is not None
        return created

    def update(self, account: str, *, name: str | None = None, state: str | None = None,
               quota: int | None = None) -> Account | None:
        self._link.execute(
            "UPDATE accounts SET name = coalesce(%s, name), state = coalesce(%s, state), "
            "quota = coalesce(%s, quota) WHERE id = %s", (name, state, quota, account))
        return self.get(account)

    def delete(self, account: str) -> bool:
        self._link.execute("DELETE FROM account_tokens WHERE account = %s", (account,))
        self._link.execute("DELETE FROM s3_keys WHERE account = %s", (account,))
        self._link.execute("DELETE FROM s3_buckets WHERE owner = %s", (account,))
        if self._link.count("DELETE FROM account_storage WHERE account = %s", (account,)):
            announce(self._link, True)
        # "account.ID." .. "account.ID/": exactly this account's counters ('/' follows '.').
        self._link.execute("DELETE FROM counters WHERE name >= %s AND name < %s",
                           (f"account.{account}.", f"account.{account}/"))
        return self._link.count("DELETE FROM accounts WHERE id = %s", (account,)) > 0

    def usage(self, account: str) -> dict[str, int]:
        prefix = f"account.{account}."
        rows = self._link.rows("SELECT name, value FROM counters WHERE name >= %s "
                               "AND name < %s", (prefix, f"account.{account}/"))
        return {name[len(prefix):]: int(value) for name, value in rows}


class TokenRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def add(self, account: str, name: str, digest: str, now: float) -> None:
        self._link.execute("INSERT INTO account_tokens (hash, account, name, created) "
                           "VALUES (%s, %s, %s, %s)", (digest, account, name, now))

    def named(self, account: str, name: str) -> AccountToken | None:
        row = self._link.one("SELECT account, name, created, last_used FROM account_tokens "
                             "WHERE account = %s AND name = %s", (account, name))
        return AccountToken(*row) if row else None

    def holder(self, digest: str) -> tuple[Account, str] | None:
        row = self._link.one(
            "SELECT a.id, a.name, a.created, a.state, a.quota, t.name FROM account_tokens t "
            "JOIN accounts a ON a.id = t.account WHERE t.hash = %s", (digest,))
        return (Account(*row[:5]), row[5]) if row else None

    def listing(self, account: str) -> list[AccountToken]:
        return [AccountToken(*row) for row in self._link.rows(
            "SELECT account, name, created, last_used FROM account_tokens WHERE account = %s "
            "ORDER BY name", (account,))]

    def revoke(self, account: str, name: str) -> bool:
        return self._link.count("DELETE FROM account_tokens WHERE account = %s AND name = %s",
                                (account, name)) > 0

    def used(self, digests: dict[str, float]) -> None:
        self._link.many("UPDATE account_tokens SET last_used = %s WHERE hash = %s "
                        "AND (last_used IS NULL OR last_used < %s)",
                        [(when, digest, when) for digest, when in digests.items()])
