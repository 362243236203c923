"""Migration 10: pinned cache entries (`filestore cache pin`)."""

from __future__ import annotations

import sqlite_utils


def migration_10(db: sqlite_utils.Database) -> None:
    """Pins (`pins.py`): the `cache_pins` table holds the pinned path prefixes; an entry under
    one is pinned, and the GC never evicts it. A pinned entry's slot is negative: the pinned
    entries are numbered -1, -2, ... without holes, apart from the others' 0..n-1, so eviction's
    random draws (slots 0..max) only ever land on evictable entries, and a cache full of pinned
    entries draws nothing at once instead of drawing in vain. The triggers keep both sides
    dense (a delete, or an entry moving to the other side, takes the outermost entry of its
    side into the slot it freed) and count the pinned side in `cache.pinned.entries` and
    `cache.pinned.bytes`, in the same transaction as the change (O(1) to read). `cache.pin_limit`
    is `cache.max_size` as of the last pin, warm or collection: an entry entering the cache
    under a pinned prefix is pinned only while the pinned bytes stay within it. In one
    transaction, and idempotent: a crash before `user_version` moves only runs it again."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _STATEMENTS:
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _fill(side: str) -> str:
    """The SQL that moves the outermost entry of a side ("max": 0..n-1, "min": the pinned
    -1..-n) into the slot OLD.slot freed."""
    beyond = ">" if side == "max" else "<"
    return (f"UPDATE cache_entries SET slot = OLD.slot WHERE slot = "
            f"(SELECT {side}(slot) FROM cache_entries) AND slot {beyond} OLD.slot;")


def _count(sign: str, row: str) -> str:
    return (f"UPDATE counters SET value = value {sign} 1 WHERE name = 'cache.pinned.entries';\n"
            f"  UPDATE counters SET value = value {sign} {row}.size "
            "WHERE name = 'cache.pinned.bytes';")


_STATEMENTS = [
    """CREATE TABLE IF NOT EXISTS cache_pins (
      prefix TEXT PRIMARY KEY,        -- a path prefix, as a listing's: "media/", "a/b"
      created REAL NOT NULL
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('cache.pinned.entries', 0), "
    "('cache.pinned.bytes', 0), ('cache.pin_limit', 0)",
    # Migration 3's trigger filled a freed slot from the top whatever its sign: now each side
    # fills its own holes.
    "DROP TRIGGER IF EXISTS cache_entries_fill_slot",
    f"""CREATE TRIGGER cache_entries_fill_slot AFTER DELETE ON cache_entries
    WHEN OLD.slot >= 0 BEGIN {_fill('max')} END""",
    f"""CREATE TRIGGER IF NOT EXISTS cache_entries_fill_pinned_slot AFTER DELETE ON cache_entries
    WHEN OLD.slot < 0 BEGIN {_fill('min')} END""",
    # Pinned (moved to the negative side) or unpinned (back): the side it left fills its hole.
    f"""CREATE TRIGGER IF NOT EXISTS cache_entries_pinned AFTER UPDATE OF slot ON cache_entries
    WHEN OLD.slot >= 0 AND NEW.slot < 0 BEGIN {_fill('max')} END""",
    f"""CREATE TRIGGER IF NOT EXISTS cache_entries_unpinned AFTER UPDATE OF slot ON cache_entries
    WHEN OLD.slot < 0 AND NEW.slot >= 0 BEGIN {_fill('min')} END""",
    f"""CREATE TRIGGER IF NOT EXISTS cache_entries_pinned_insert AFTER INSERT ON cache_entries
    WHEN NEW.slot < 0 BEGIN {_count('+', 'NEW')} END""",
    f"""CREATE TRIGGER IF NOT EXISTS cache_entries_pinned_delete AFTER DELETE ON cache_entries
    WHEN OLD.slot < 0 BEGIN {_count('-', 'OLD')} END""",
    """CREATE TRIGGER IF NOT EXISTS cache_entries_pinned_update
    AFTER UPDATE OF slot, size ON cache_entries WHEN OLD.slot < 0 OR NEW.slot < 0 BEGIN
      UPDATE counters SET value = value - (OLD.slot < 0) + (NEW.slot < 0)
      WHERE name = 'cache.pinned.entries';
      UPDATE counters SET value = value - (OLD.slot < 0) * OLD.size + (NEW.slot < 0) * NEW.size
      WHERE name = 'cache.pinned.bytes';
    END""",
]
