"""The statistics the admin page, the CLI and the API show: all from counters, never a scan.

Every figure is a row of the `counters` table, kept in the transaction that changed it (files,
queue, index) or added up in memory and written in batches (the cache's events, see
cache/usage.py). So a snapshot costs one small query whether there are ten files or ten million.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .registry import CACHE_EVENTS, LOCATIONS


def snapshot(counters: dict[str, int], settings: Settings) -> dict[str, Any]:
    def pair(prefix: str) -> dict[str, int]:
        return {"count": counters.get(f"files{prefix}", 0),
                "bytes": counters.get(f"bytes{prefix}", 0)}

    cache: dict[str, Any] = {name: counters.get(f"cache.{name}", 0) for name in CACHE_EVENTS}
    reads = cache["hits"] + cache["misses"]
    cache.update(
        entries=counters.get("cache.entries", 0),
        bytes=counters.get("cache.bytes", 0),
        max_size=settings.cache.max_size,
        hit_ratio=round(cache["hits"] / reads, 4) if reads else None,
    )
    return {
        "files": {**pair(""), **{loc: pair(f".{loc}") for loc in LOCATIONS}},
        "cache": cache,
        "queue": {op: {state: counters.get(f"queue.{op}.{state}", 0)
                       for state in ("pending", "failed")} for op in ("upload", "delete")},
        "uploads": {"done": counters.get("uploads.done", 0),
                    "bytes": counters.get("uploads.bytes", 0)},
    }


def size_text(size: int) -> str:
    """A byte count as people read it: 1,234 B, 12.3 MiB, 4.0 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, step = float(size), 0
    while value >= 1024 and step < len(units) - 1:
        value, step = value / 1024, step + 1
    return f"{size:,} B" if step == 0 else f"{value:,.1f} {units[step]}"


def report(stats: dict[str, Any]) -> str:
    """The snapshot as a few lines for a terminal (`filestore stats`)."""
    files, cache, queue = stats["files"], stats["cache"], stats["queue"]

    def pair(counts: dict[str, int]) -> str:
        return f"{counts['count']:,} ({size_text(counts['bytes'])})"

    ratio = "n/a" if cache["hit_ratio"] is None else f"{cache['hit_ratio']:.1%}"
    return "\n".join([
        f"files     {pair(files)}: local only {pair(files['local'])}, "
        f"in the cloud {pair(files['remote'])}",
        f"cache     {cache['entries']:,} entries, {size_text(cache['bytes'])} of "
        f"{size_text(cache['max_size'])}; hit ratio {ratio} ({cache['hits']:,} hits, "
        f"{cache['misses']:,} misses)",
        f"          served from the cache {size_text(cache['hit_bytes'])}, downloaded "
        f"{size_text(cache['remote_bytes'])} in {cache['fills']:,} fills and "
        f"{cache['passthrough']:,} pass-through reads",
        f"          evictions {cache['evictions']:,}, integrity failures "
        f"{cache['integrity_failures']:,}, other download failures {cache['fill_errors']:,}",
        f"queue     uploads {queue['upload']['pending']:,} pending, "
        f"{queue['upload']['failed']:,} failed; remote deletes {queue['delete']['pending']:,} "
        f"pending, {queue['delete']['failed']:,} failed",
        f"uploaded  {stats['uploads']['done']:,} files, {size_text(stats['uploads']['bytes'])}",
    ])
