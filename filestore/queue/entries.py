"""The queue table: one row per path with remote work to do (an upload or a remote delete).

One row per path, not one table per kind of work, because the work for one path must happen in
order and never concurrently: an older upload racing a newer one could leave the older bytes in the
bucket, and a remote delete racing a re-upload could delete the new copy. So a PUT or DELETE
rewrites the path's row (op, version, due time) and keeps its lease: work already in flight
finishes, finds its version superseded, records nothing, and frees the row for the new work.

Every function takes the writer connection inside `Registry.transaction()`, except the reads.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator

_COLUMNS = ("path, op, version, remote, not_before, attempts, state, leased_until, lease_owner, "
            "last_error")


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str
    op: str  # "upload" | "delete"
    version: int
    remote: str
    not_before: float
    attempts: int
    state: str  # "pending" | "failed"
    leased_until: float | None
    lease_owner: str | None
    last_error: str | None


def get(conn: sqlite3.Connection, path: str) -> Entry | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM queue WHERE path = ?", (path,)).fetchone()
    return Entry(*row) if row else None


def schedule(conn: sqlite3.Connection, path: str, op: str, version: int, remote: str,
             not_before: float, now: float) -> None:
    """Make `op` for `version` the path's next remote work, due at `not_before`; a lease held
    by work in flight is kept, so that work finishes before this starts."""
    conn.execute(
        "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, created, "
        "updated) VALUES (?, ?, ?, ?, ?, 0, 'pending', ?, ?) "
        "ON CONFLICT (path) DO UPDATE SET op = excluded.op, version = excluded.version, "
        "remote = excluded.remote, not_before = excluded.not_before, attempts = 0, "
        "state = 'pending', last_error = NULL, updated = excluded.updated",
        (path, op, version, remote, not_before, now, now),
    )


def drop(conn: sqlite3.Connection, path: str) -> bool:
    return conn.execute("DELETE FROM queue WHERE path = ?", (path,)).rowcount > 0


def in_flight(entry: Entry | None, now: float) -> bool:
    return entry is not None and entry.leased_until is not None and entry.leased_until > now


def lease_due(conn: sqlite3.Connection, owner: str, now: float, until: float,
              limit: int) -> list[Entry]:
    """Take up to `limit` due, pending, unleased rows for `owner` until `until`."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM queue WHERE state = 'pending' AND not_before <= ? "
        "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY not_before LIMIT ?",
        (now, now, limit),
    ).fetchall()
    entries = [Entry(*row) for row in rows]
    conn.executemany(
        "UPDATE queue SET leased_until = ?, lease_owner = ? WHERE path = ?",
        [(until, owner, e.path) for e in entries],
    )
    return [dataclasses.replace(e, leased_until=until, lease_owner=owner) for e in entries]


def renew(conn: sqlite3.Connection, owner: str, paths: list[str], until: float) -> None:
    conn.executemany(
        "UPDATE queue SET leased_until = ? WHERE path = ? AND lease_owner = ?",
        [(until, path, owner) for path in paths],
    )


def is_current(conn: sqlite3.Connection, entry: Entry) -> bool:
    """Whether the row still asks for exactly the work `entry` was leased for."""
    now = get(conn, entry.path)
    return (now is not None and now.op == entry.op and now.version == entry.version
            and now.lease_owner == entry.lease_owner)


def finish(conn: sqlite3.Connection, entry: Entry) -> None:
    """Done: remove the row if it still asks for this work, else free it for the newer work."""
    if is_current(conn, entry):
        drop(conn, entry.path)
    else:
        release(conn, entry)


def release(conn: sqlite3.Connection, entry: Entry) -> None:
    conn.execute(
        "UPDATE queue SET leased_until = NULL, lease_owner = NULL WHERE path = ? "
        "AND lease_owner = ?",
        (entry.path, entry.lease_owner),
    )


def fail(conn: sqlite3.Connection, entry: Entry, error: str, retry_at: float | None,
         now: float) -> None:
    """Count a failed attempt: retry at `retry_at`, or (None) mark the row failed."""
    if not is_current(conn, entry):
        release(conn, entry)  # the work changed meanwhile; the new work starts afresh
        return
    conn.execute(
        "UPDATE queue SET attempts = attempts + 1, last_error = ?, leased_until = NULL, "
        "lease_owner = NULL, updated = ?, state = ?, not_before = COALESCE(?, not_before) "
        "WHERE path = ?",
        (error, now, "pending" if retry_at is not None else "failed", retry_at, entry.path),
    )


def clear_leases(conn: sqlite3.Connection) -> None:
    """After a crash, when no other process is live: every lease is stale."""
    conn.execute("UPDATE queue SET leased_until = NULL, lease_owner = NULL "
                 "WHERE leased_until IS NOT NULL")


def next_due(conn: sqlite3.Connection, now: float) -> float | None:
    """When the earliest pending row becomes workable: the first free row's due time, or the
    first lease to expire (a crashed process's). Both are index walks, not scans."""
    free = conn.execute(
        "SELECT not_before FROM queue WHERE state = 'pending' "
        "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY not_before LIMIT 1",
        (now,),
    ).fetchone()
    lease = conn.execute(
        "SELECT MIN(leased_until) FROM queue WHERE leased_until > ?", (now,)
    ).fetchone()
    times = [t for t in (free[0] if free else None, lease[0] if lease else None) if t is not None]
    return min(times) if times else None


def listing(conn: sqlite3.Connection, failed_only: bool = False) -> Iterator[Entry]:
    """Every row (or every failed one), in due order: streamed, however many there are."""
    where = "WHERE state = 'failed' " if failed_only else ""
    for row in conn.execute(f"SELECT {_COLUMNS} FROM queue {where}ORDER BY not_before, path"):
        yield Entry(*row)


def retry(conn: sqlite3.Connection, path: str | None, now: float) -> int:
    """Make failed rows (one path's, or all with None) due now with fresh attempts; how many."""
    where, args = ("AND path = ?", (path,)) if path is not None else ("", ())
    return conn.execute(
        "UPDATE queue SET state = 'pending', attempts = 0, not_before = ?, updated = ? "
        f"WHERE state = 'failed' {where}", (now, now, *args)
    ).rowcount
