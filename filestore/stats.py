"""The statistics the admin page, the CLI and the API show: all from counters, never a scan.

Every figure is a row of the `counters` table, kept in the transaction that changed it (files,
queue, index) or added up in memory and written in batches (the cache's events, see
cache/usage.py). So a snapshot costs one small query whether there are ten files or ten million;
`figures` adds a few bounded index walks (the queue's timing, the data at risk, the errors), and
what the settings say of the queue's pace: the upload window and the bandwidth caps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import plan
from .config import Settings
from .registry import CACHE_EVENTS, LOCATIONS, Registry, Tables
from .upload_window import window_of

# Counting due and waiting uploads walks an index range; past this many it says "at least".
COUNT_CAP = 10_000
RECENT_ERRORS = 5


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
        # Never evicted, counted toward max_size (cache/pins.py).
        pinned_entries=counters.get("cache.pinned.entries", 0),
        pinned_bytes=counters.get("cache.pinned.bytes", 0),
    )
    return {
        "files": {**pair(""), **{loc: pair(f".{loc}") for loc in LOCATIONS}},
        "cache": cache,
        "queue": {op: {state: counters.get(f"queue.{op}.{state}", 0)
                       for state in ("pending", "failed")} for op in ("upload", "delete")},
        "uploads": {"done": counters.get("uploads.done", 0),
                    "bytes": counters.get("uploads.bytes", 0)},
    }


def figures(registry: Registry, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Everything the admin page and `filestore stats` show: the counters' snapshot, plus the
    queue's timing, the latest errors and the move job, each a bounded index walk."""
    now = time.time() if now is None else now
    tx = registry.read
    counters = tx.counters.all()
    stats = snapshot(counters, settings)
    stats["at_risk"] = at_risk(tx, counters, now)
    stats["queue"]["upload"].update(_upload_timing(tx, stats["queue"]["upload"]["pending"], now))
    stats["recent_errors"] = [
        {"path": entry.path, "op": entry.op, "error": entry.last_error,
         "when": entry.updated, "failed": entry.state == "failed"}
        for entry in tx.queue.recent_errors(RECENT_ERRORS)
    ]
    job = tx.jobs.active() or next(iter(tx.jobs.recent(1)), None)
    stats["job"] = None if job is None else job.public()
    stats["plan"] = plan.overview(settings, tx)
    stats["upload_window"] = upload_window(settings.upload.hours, now)
    stats["bandwidth"] = {"upload": settings.upload.bandwidth,
                          "download": settings.cache.download_bandwidth}
    stats["time"] = now
    return stats


def upload_window(hours: str, now: float) -> dict[str, Any]:
    """Whether the queue works now (`upload.hours`), until when it waits (`opens_at`, seconds
    since the epoch, and `opens_in`) or works (`closes_at`), and that in words (`text`)."""
    window = window_of(hours)
    opens, closes = window.next_opening(now), window.closes_at(now)
    if window.always:
        text = "always open (upload.hours is empty)"
    elif opens is not None:
        text = (f"closed: uploads and remote deletes wait until {_clock(opens, now)} "
                f"(in {age_text(opens - now)})")
    elif closes is not None:
        text = f"open until {_clock(closes, now)} (in {age_text(closes - now)})"
    else:
        text = "open all day"
    return {"hours": hours, "open": opens is None, "opens_at": opens,
            "opens_in": None if opens is None else round(opens - now, 3),
            "closes_at": closes, "text": f"{text}; upload.hours = {hours!r}" if hours else text}


def _clock(moment: float, now: float) -> str:
    """A local time of day, with the date when it is not today's."""
    local, today = time.localtime(moment), time.localtime(now)
    same_day = local[:3] == today[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", local)


def at_risk(tx: Tables, counters: Mapping[str, int], now: float) -> dict[str, Any]:
    """The data at risk: the files meant for the cloud (their upload is queued, pending or
    failed) with no verified copy of their current bytes there yet, and their bytes (counters);
    how long ago the oldest of them was written (its `modified` time: a re-PUT starts its
    cool-down and its age again), and how long ago the longest-failed upload failed (one index
    seek each). Files the storage plan keeps local (`upload = false`) have no upload queued, so
    they are not counted. The ages are None when there is no such file."""
    oldest = tx.queue.unprotected_oldest()
    failed = tx.queue.failed_oldest("upload")

    def age(found: tuple[str, float] | None) -> float | None:
        return None if found is None else round(max(0.0, now - found[1]), 3)

    return {
        "files": counters.get("queue.upload.pending", 0) + counters.get("queue.upload.failed", 0),
        "bytes": counters.get("unprotected.bytes", 0),
        "oldest_seconds": age(oldest),
        "oldest_path": None if oldest is None else oldest[0],
        "failed_oldest_seconds": age(failed),
        "failed_oldest_path": None if failed is None else failed[0],
    }


def _upload_timing(tx: Tables, pending: int, now: float) -> dict[str, Any]:
    """Pending uploads split into due now and still cooling down, and those in flight. Each
    count stops at `COUNT_CAP`; the other side is then the counter's remainder, so both are
    exact unless both are past the cap (then `exact` is false and both are lower bounds)."""

    def capped(due: bool) -> int:
        return tx.queue.count_uploads(due=due, now=now, cap=COUNT_CAP)

    due = capped(True)
    waiting, exact = pending - due, True
    if due >= COUNT_CAP:
        waiting = capped(False)
        if waiting < COUNT_CAP:
            due = pending - waiting
        else:
            exact = False
    in_flight = tx.queue.uploads_in_flight(now)
    return {"due": due, "waiting": max(waiting, 0), "in_flight": in_flight, "exact": exact}


def size_text(size: int) -> str:
    """A byte count as people read it: 1,234 B, 12.3 MiB, 4.0 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, step = float(size), 0
    while value >= 1024 and step < len(units) - 1:
        value, step = value / 1024, step + 1
    return f"{size:,} B" if step == 0 else f"{value:,.1f} {units[step]}"


def age_text(seconds: float) -> str:
    """A duration as people read it: 42 s, 12 min, 3.5 h, 2.0 d (the page's script says the
    same)."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} d"


def _timing(upload: dict[str, Any]) -> str:
    if "due" not in upload:
        return ""
    more = "" if upload["exact"] else "+"
    return (f" ({upload['due']:,}{more} due, {upload['waiting']:,}{more} cooling down, "
            f"{upload['in_flight']:,} in flight)")


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
        f"          pinned {cache['pinned_entries']:,} entries "
        f"({size_text(cache['pinned_bytes'])}), never evicted",
        f"          served from the cache {size_text(cache['hit_bytes'])}, downloaded "
        f"{size_text(cache['remote_bytes'])} in {cache['fills']:,} fills and "
        f"{cache['passthrough']:,} pass-through reads",
        f"          evictions {cache['evictions']:,}, integrity failures "
        f"{cache['integrity_failures']:,}, other download failures {cache['fill_errors']:,}",
        f"queue     uploads {queue['upload']['pending']:,} pending{_timing(queue['upload'])}, "
        f"{queue['upload']['failed']:,} failed; remote deletes {queue['delete']['pending']:,} "
        f"pending, {queue['delete']['failed']:,} failed",
        f"uploaded  {stats['uploads']['done']:,} files, {size_text(stats['uploads']['bytes'])}",
        *_pace_lines(stats.get("upload_window"), stats.get("bandwidth")),
        *_at_risk_lines(stats.get("at_risk")),
        *_remote_lines(stats.get("plan")),
        *_job_lines(stats.get("job")),
        *(f"error     {e['path']}: {e['error']}" for e in stats.get("recent_errors", [])),
    ])


def _pace_lines(window: dict[str, Any] | None, caps: dict[str, int] | None) -> list[str]:
    """The upload window and the bandwidth caps, when any is set."""
    lines = []
    if window is not None and window["hours"]:
        lines.append(f"window    {window['text']}")
    if caps is not None and (caps["upload"] or caps["download"]):
        lines.append(f"bandwidth uploads {rate_text(caps['upload'])}, cache fills "
                     f"{rate_text(caps['download'])}")
    return lines


def rate_text(rate: int) -> str:
    """A bandwidth cap as people read it: "2.0 MiB/s", or "no cap" for 0."""
    return f"{size_text(rate)}/s" if rate else "no cap"


def _at_risk_lines(risk: dict[str, Any] | None) -> list[str]:
    if risk is None:
        return []
    if not risk["files"]:
        line = "none: every file meant for the cloud has a verified copy there"
    else:
        line = (f"{risk['files']:,} files ({size_text(risk['bytes'])}) with no verified cloud "
                "copy yet")
        if risk["oldest_seconds"] is not None:
            line += (f", the oldest written {age_text(risk['oldest_seconds'])} ago "
                     f"({risk['oldest_path']})")
    lines = [f"at risk   {line}"]
    if risk["failed_oldest_seconds"] is not None:
        lines.append(f"          the oldest failed upload failed "
                     f"{age_text(risk['failed_oldest_seconds'])} ago "
                     f"({risk['failed_oldest_path']})")
    return lines


def _remote_lines(overview: dict[str, Any] | None) -> list[str]:
    """A line per remote, when the storage plan has more than the default one."""
    if overview is None or len(overview["remotes"]) < 2:
        return []
    return [f"remote    {name}: {r['files']:,} files ({size_text(r['bytes'])}) at {r['url']}"
            for name, r in overview["remotes"].items()]


def _job_lines(job: dict[str, Any] | None) -> list[str]:
    if job is None:
        return []
    progress = "" if job["progress"] is None else f" {job['progress']:.0%}"
    return [f"job       {job['id']} {job['kind']}: {job['state']}{progress}, "
            f"{job['done']:,} of {job['total']:,} files, {size_text(job['bytes'])} of "
            f"{size_text(job['total_bytes'])}, {job['errors']:,} errors"]
