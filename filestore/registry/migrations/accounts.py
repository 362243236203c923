"""Migrations 6-7: admin sessions, single-use grants, accounts and their usage counters."""

from __future__ import annotations

import sqlite_utils


def migration_6(db: sqlite_utils.Database) -> None:
    """Admin sessions that can end before their cookie does (`sessions.py`: one row per
    session, keyed by the hash of its id, and the generation "sign out everywhere" moves), and
    the nonces of single-use signed URLs (`grants.py`)."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS sessions (
          id TEXT PRIMARY KEY,            -- SHA-256 (hex) of the id the cookie carries
          generation INTEGER NOT NULL,    -- counts while it is counters' sessions.generation
          created REAL NOT NULL,
          expires REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS grants (
          nonce TEXT PRIMARY KEY,         -- a --once URL's `once=`, under its signature
          expires REAL NOT NULL,          -- the URL's expiry: pruned an hour after it
          claimed REAL NOT NULL,          -- when a request took it
          spent REAL                      -- when that request succeeded; NULL while it runs
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS grants_expires ON grants (expires);
        INSERT OR IGNORE INTO counters (name, value) VALUES ('sessions.generation', 0);
        """
    )


# The account a path belongs to (its first segment), in SQL: "" for a path with no "/".
_ACCOUNT_OF = "substr({row}.path, 1, instr({row}.path, '/') - 1)"


def migration_7(db: sqlite_utils.Database) -> None:
    """Accounts (`accounts.py`): each owns the path prefix `ID/`, with its tokens (stored as
    hashes) and its usage, counted by triggers in the same transaction as the change:
    `account.ID.files`, `.bytes`, `.local.bytes`, `.remote.NAME.bytes` (and `.uploads`, by
    `FileRows.mark_uploaded`). A path's account is its first segment, if that names one."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS accounts (
          id TEXT PRIMARY KEY,              -- [a-z0-9][a-z0-9-]{0,62}: owns the prefix "id/"
          name TEXT NOT NULL,
          created REAL NOT NULL,
          state TEXT NOT NULL DEFAULT 'active',  -- 'active' | 'suspended'
          quota INTEGER NOT NULL DEFAULT 0  -- bytes the account may hold; 0: no limit
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS account_tokens (
          hash TEXT PRIMARY KEY,            -- SHA-256 (hex) of the token: never the token
          account TEXT NOT NULL,
          name TEXT NOT NULL,
          created REAL NOT NULL,
          last_used REAL,                   -- written at most once a minute per process
          UNIQUE (account, name)
        ) WITHOUT ROWID;
        """
    )

    def bump(sign: str, row: str) -> str:
        account = _ACCOUNT_OF.format(row=row)
        prefix = f"'account.' || {account} || '."
        return (
            "INSERT INTO counters (name, value) VALUES "
            f"({prefix}files', {sign}1), ({prefix}bytes', {sign}{row}.size), "
            f"({prefix}' || {row}.location || '.bytes', {sign}{row}.size) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;\n"
            "  INSERT INTO counters (name, value) SELECT "
            f"{prefix}remote.' || {row}.remote || '.bytes', {sign}{row}.size "
            f"WHERE {row}.location = 'remote' AND {row}.remote IS NOT NULL "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value;"
        )

    def owned(row: str) -> str:
        account = _ACCOUNT_OF.format(row=row)
        return (f"instr({row}.path, '/') > 0 AND EXISTS "
                f"(SELECT 1 FROM accounts WHERE id = {account})")

    db.executescript(
        f"""
        CREATE TRIGGER IF NOT EXISTS files_account_insert AFTER INSERT ON files
        WHEN {owned('NEW')} BEGIN {bump('+', 'NEW')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_delete AFTER DELETE ON files
        WHEN {owned('OLD')} BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_update_old
        AFTER UPDATE OF size, location, remote ON files WHEN {owned('OLD')}
        BEGIN {bump('-', 'OLD')} END;
        CREATE TRIGGER IF NOT EXISTS files_account_update_new
        AFTER UPDATE OF size, location, remote ON files WHEN {owned('NEW')}
        BEGIN {bump('+', 'NEW')} END;
        """
    )
