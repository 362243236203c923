"""Each node as `filestore cluster status` and the admin page show it: name, URL, last heartbeat,
alive, and what it holds (local-only files and bytes, uploads in flight, cache), from the
counters its changes move and its workers' leases, never a scan of the files."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..config import Settings
from ..registry import Tables


def nodes(tables: Tables, settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """Every node that ever beat, in name order (a node removed for good stays until
    `filestore cluster forget NAME`)."""
    now = time.time() if now is None else now
    shown = []
    for node in tables.nodes.all():
        figures = tables.nodes.figures(node.name, now)
        shown.append({
            "name": node.name, "url": node.url, "started": node.started,
            "heartbeat": node.heartbeat, "seconds_since_heartbeat": round(node.age, 1),
            "alive": node.alive(settings.cluster.dead_after),
            "this": node.name == settings.node, **dataclasses.asdict(figures),
        })
    return shown


def overview(tables: Tables, settings: Settings) -> dict[str, Any]:
    listed = nodes(tables, settings)
    return {"node": settings.node, "dead_after": settings.cluster.dead_after,
            "nodes": listed, "alive": sum(n["alive"] for n in listed)}
