"""Migrations 6, 7 and 9 in PostgreSQL: admin sessions and single-use grants, accounts with their
tokens and usage counters, and the storage accounts set for themselves (see
`registry/migrations/accounts.py` and `account_storage.py`)."""

from __future__ import annotations

from .triggers import REAL, TEXT, add_counters, function, trigger


def migration_6() -> list[str]:
    return [
        f"""CREATE TABLE sessions (
          id {TEXT} PRIMARY KEY, generation bigint NOT NULL, created {REAL} NOT NULL,
          expires {REAL} NOT NULL
        )""",
        f"""CREATE TABLE grants (
          nonce {TEXT} PRIMARY KEY, expires {REAL} NOT NULL, claimed {REAL} NOT NULL,
          spent {REAL}
        )""",
        "CREATE INDEX grants_expires ON grants (expires)",
        add_counters("sessions.generation"),
    ]


# The account a path belongs to (its first segment), in SQL.
_ACCOUNT_OF = "split_part({row}.path, '/', 1)"


def migration_7() -> list[str]:
    """Usage counters per account, kept in the same transaction as the change. SQLite's
    triggers say in their `WHEN` that the first segment names an account (a subquery);
    PostgreSQL allows no subquery there, so the functions check it first."""

    def bump(sign: str, row: str) -> str:
        account = _ACCOUNT_OF.format(row=row)
        prefix = f"'account.' || {account} || '."
        return (
            f"IF EXISTS (SELECT 1 FROM accounts WHERE id = {account}) THEN\n"
            "INSERT INTO counters (name, value) VALUES "
            f"({prefix}files', {sign}1), ({prefix}bytes', {sign}{row}.size), "
            f"({prefix}' || {row}.location || '.bytes', {sign}{row}.size) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value;\n"
            "INSERT INTO counters (name, value) SELECT "
            f"{prefix}remote.' || {row}.remote || '.bytes', {sign}{row}.size "
            f"WHERE {row}.location = 'remote' AND {row}.remote IS NOT NULL "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value;\n"
            "END IF;"
        )

    def owned(row: str) -> str:
        return f"strpos({row}.path, '/') > 0"

    columns = "UPDATE OF size, location, remote"
    return [
        f"""CREATE TABLE accounts (
          id {TEXT} PRIMARY KEY, name {TEXT} NOT NULL, created {REAL} NOT NULL,
          state {TEXT} NOT NULL DEFAULT 'active', quota bigint NOT NULL DEFAULT 0
        )""",
        f"""CREATE TABLE account_tokens (
          hash {TEXT} PRIMARY KEY, account {TEXT} NOT NULL, name {TEXT} NOT NULL,
          created {REAL} NOT NULL, last_used {REAL},
          UNIQUE (account, name)
        )""",
        function("files_account_add", bump("+", "NEW")),
        function("files_account_remove", bump("-", "OLD")),
        trigger("files_account_insert", "INSERT", "files", "files_account_add", owned("NEW")),
        trigger("files_account_delete", "DELETE", "files", "files_account_remove",
                owned("OLD")),
        trigger("files_account_update_old", columns, "files", "files_account_remove",
                owned("OLD")),
        trigger("files_account_update_new", columns, "files", "files_account_add",
                owned("NEW")),
    ]


def migration_9() -> list[str]:
    return [
        f"""CREATE TABLE account_storage (
          account {TEXT} PRIMARY KEY, remotes {TEXT} NOT NULL, plan {TEXT} NOT NULL,
          updated {REAL} NOT NULL
        )""",
    ]
