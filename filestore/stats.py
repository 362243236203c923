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
