"""Migration 10 in PostgreSQL: pinned cache entries on the negative side of the slots, counted
in `cache.pinned.entries` / `cache.pinned.bytes` (see `registry/migrations/cache_pins.py`)."""

from __future__ import annotations

from .single_node import _fill
from .triggers import REAL, TEXT, add_counters, function, on, trigger


def _count(sign: str, row: str) -> str:
    return (f"UPDATE counters SET value = value {sign} 1 WHERE name = 'cache.pinned.entries';\n"
            f"UPDATE counters SET value = value {sign} {row}.size "
            "WHERE name = 'cache.pinned.bytes';")


def migration_10() -> list[str]:
    table = "cache_entries"
    return [
        f"CREATE TABLE cache_pins (prefix {TEXT} PRIMARY KEY, created {REAL} NOT NULL)",
        add_counters("cache.pinned.entries", "cache.pinned.bytes", "cache.pin_limit"),
        # Migration 3's trigger filled a freed slot from the top whatever its sign: now each
        # side fills its own holes.
        f"DROP TRIGGER cache_entries_fill_slot ON {table}",
        function("cache_entries_fill_slot", _fill("max")),
        function("cache_entries_fill_pinned_slot", _fill("min")),
        trigger("cache_entries_fill_slot", "DELETE", table, "cache_entries_fill_slot",
                "OLD.slot >= 0"),
        trigger("cache_entries_fill_pinned_slot", "DELETE", table,
                "cache_entries_fill_pinned_slot", "OLD.slot < 0"),
        # Pinned (moved to the negative side) or unpinned (back): the side it left fills its hole.
        trigger("cache_entries_pinned", "UPDATE OF slot", table, "cache_entries_fill_slot",
                "OLD.slot >= 0 AND NEW.slot < 0"),
        trigger("cache_entries_unpinned", "UPDATE OF slot", table,
                "cache_entries_fill_pinned_slot", "OLD.slot < 0 AND NEW.slot >= 0"),
        *on("cache_entries_pinned_insert", "INSERT", table, _count("+", "NEW"),
            "NEW.slot < 0"),
        *on("cache_entries_pinned_delete", "DELETE", table, _count("-", "OLD"),
            "OLD.slot < 0"),
        *on("cache_entries_pinned_update", "UPDATE OF slot, size", table,
            "UPDATE counters SET value = value - (OLD.slot < 0)::int + (NEW.slot < 0)::int "
            "WHERE name = 'cache.pinned.entries';\n"
            "UPDATE counters SET value = value - (OLD.slot < 0)::int * OLD.size "
            "+ (NEW.slot < 0)::int * NEW.size WHERE name = 'cache.pinned.bytes';",
            "OLD.slot < 0 OR NEW.slot < 0"),
    ]
