"""The accounts' rows and usage counters in the registry itself (migration 7's triggers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from filestore.registry import SqliteRegistry


@pytest.fixture
def registry(tmp_path: Path):
    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    yield registry
    registry.close()


def _put(registry: SqliteRegistry, path: str, size: int) -> None:
    with registry.transaction() as tx:
        tx.files.upsert(path, size, "0" * 64, "text/plain", 1, 0.0)


def test_files_already_under_a_new_accounts_prefix_are_counted(registry: SqliteRegistry) -> None:
    _put(registry, "acme/a", 5)
    _put(registry, "acme/sub/b", 7)
    _put(registry, "acmex/c", 100)  # another prefix that merely starts the same
    _put(registry, "loose", 1000)
    with registry.transaction() as tx:
        tx.files.mark_uploaded("acme/a", "default", "k", "e", 5, 0.0)
        tx.accounts.create("acme", "Acme", 0, 0.0)
    usage = registry.read.accounts.usage("acme")
    assert usage == {"files": 2, "bytes": 12, "local.bytes": 7, "remote.bytes": 5,
                     "remote.default.bytes": 5}


def test_usage_follows_every_change_in_the_same_transaction(registry: SqliteRegistry) -> None:
    with registry.transaction() as tx:
        tx.accounts.create("acme", "Acme", 0, 0.0)
    _put(registry, "acme/a", 5)
    _put(registry, "acme/a", 9)  # replaced: its size changes
    _put(registry, "other/x", 3)
    with registry.transaction() as tx:
        tx.files.mark_uploaded("acme/a", "archive", "k", "e", 9, 0.0)
    assert registry.read.accounts.usage("acme") == {
        "files": 1, "bytes": 9, "local.bytes": 0, "remote.bytes": 9,
        "remote.archive.bytes": 9, "uploads": 1}
    with registry.transaction() as tx:
        tx.files.delete("acme/a")
    usage = registry.read.accounts.usage("acme")
    assert usage["files"] == 0 and usage["bytes"] == 0 and usage["remote.archive.bytes"] == 0
    assert not any(name.startswith("account.other.")
                   for name in registry.read.counters.all())  # "other" is no account


def test_removing_an_account_forgets_its_tokens_and_counters_only(
        registry: SqliteRegistry) -> None:
    with registry.transaction() as tx:
        tx.accounts.create("ab", "AB", 0, 0.0)
        tx.accounts.create("abc", "ABC", 0, 0.0)
        tx.tokens.add("ab", "default", "1" * 64, 0.0)
    _put(registry, "ab/x", 1)
    _put(registry, "abc/y", 2)
    with registry.transaction() as tx:
        tx.files.delete("ab/x")
        assert tx.accounts.delete("ab")
    assert registry.read.tokens.holder("1" * 64) is None
    assert registry.read.accounts.usage("ab") == {}
    assert registry.read.accounts.usage("abc")["bytes"] == 2  # a longer id is untouched
