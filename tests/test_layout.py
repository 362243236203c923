"""The code's shape, checked: SQL lives in `filestore/registry/` alone, no module grows past 500
lines, and commands that only look at the registry open it read-only (no write lock, no
migration, no crash recovery)."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from filestore.cli import main
from filestore.registry import SCHEMA_VERSION

PACKAGE = Path(__file__).resolve().parents[1] / "filestore"
REGISTRY = PACKAGE / "registry"
MAX_LINES = 500
# What SQL looks like in a string: a statement's opening words.
_SQL = re.compile(r"""["'](SELECT |INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX|"""
                  r"""TRIGGER)|PRAGMA |BEGIN|COMMIT)""")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_registry_speaks_sql() -> None:
    outside = [path for path in _modules() if REGISTRY not in path.parents]
    assert len(outside) > 40  # the walk found the package
    offenders = []
    for path in outside:
        text = path.read_text()
        if re.search(r"^\s*(import sqlite3|from sqlite3 )", text, re.M):
            offenders.append(f"{path.relative_to(PACKAGE)}: imports sqlite3")
        offenders += [f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, m.start()) + 1}: "
                      f"SQL {m.group(0)!r}" for m in _SQL.finditer(text)]
    assert not offenders, "\n".join(offenders)


def test_the_sql_check_sees_sql() -> None:
    """The pattern above finds the registry's own statements (so it would find them anywhere)."""
    found = sum(len(_SQL.findall(path.read_text())) for path in REGISTRY.glob("*.py"))
    assert found > 50


def test_no_module_is_over_500_lines() -> None:
    long = {str(path.relative_to(PACKAGE)): n for path in _modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory prepared by a first command (which creates and migrates its registry)."""
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["token"], env={"FILESTORE_STORAGE__DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    return data


READ_ONLY = [["stats", "--json"], ["queue", "list", "--json"], ["plan", "show", "--json"],
             ["plan", "check", "a/b.txt", "--json"], ["settings", "show", "--json"], ["token"],
             ["sign", "a/b.txt"]]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda args: " ".join(args[:2]))
def test_read_only_commands_take_no_write_lock_and_recover_nothing(
        data_dir: Path, args: list[str]) -> None:
    """While another process holds the start-up lock (a server starting, a restore), a command
    that only looks still answers, and leaves a PUT's intent for the next real start to
    recover."""
    registry = data_dir / "registry.sqlite3"
    with sqlite3.connect(registry) as conn:
        conn.execute("INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
                     "VALUES ('put', 'x', '/nonexistent', 1, '', 't', 0)")
    lock = os.open(data_dir / "start.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = {"FILESTORE_STORAGE__DATA_DIR": str(data_dir)}
        result = CliRunner().invoke(main, args, env=env)  # would block on the lock
    finally:
        os.close(lock)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(registry) as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 1  # not recovered
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_write_command_does_recover(data_dir: Path) -> None:
    """The counterpart: a command that writes opens the store fully and recovers."""
    registry = data_dir / "registry.sqlite3"
    with sqlite3.connect(registry) as conn:
        conn.execute("INSERT INTO intents (op, path, tmp, size, sha256, content_type, created) "
                     "VALUES ('put', 'x', '/nonexistent', 1, '', 't', 0)")
    result = CliRunner().invoke(main, ["gc"], env={"FILESTORE_STORAGE__DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    with sqlite3.connect(registry) as conn:
        assert conn.execute("SELECT count(*) FROM intents").fetchone()[0] == 0
