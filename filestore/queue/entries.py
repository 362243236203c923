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
        "state = 'pending', last_error = NULL, updated = excluded.updated, job = NULL, "
        "job_prior_due = NULL, job_prior_op = NULL",
        (path, op, version, remote, not_before, now, now),
    )


def upload_now(conn: sqlite3.Connection, path: str, version: int, remote: str, now: float,
               job: int | None = None) -> None:
    """Make the upload of `version` due now, skipping its cool-down ("upload now", or on behalf
    of move job `job`). A queued upload of that version keeps its lease, and for a job remembers
    its cool-down (a cancel restores it); other work is replaced, as a PUT would replace it."""
    current = get(conn, path)
    if current is not None and current.op == "upload" and current.version == version:
        conn.execute(
            "UPDATE queue SET job = COALESCE(?, job), job_prior_due = CASE WHEN job IS NOT NULL "
            "THEN job_prior_due ELSE not_before END, not_before = ?, state = 'pending', "
            "attempts = CASE WHEN state = 'failed' THEN 0 ELSE attempts END, updated = ? "
            "WHERE path = ?",
            (job, now, now, path),
        )
        return
    schedule(conn, path, "upload", version, remote, now, now)
    if job is not None:
        # A remote delete this upload replaces comes back if the job is cancelled.
        replaced = current if current is not None and current.op == "delete" else None
        conn.execute("UPDATE queue SET job = ?, job_prior_due = ?, job_prior_op = ? "
                     "WHERE path = ?", (job, replaced.not_before if replaced else None,
                                        "delete" if replaced else None, path))


def release_job(conn: sqlite3.Connection, job: int, now: float, limit: int = 1000) -> int:
    """Undo what a cancelled move job queued and not yet started, up to `limit` rows (call it
    again, in a new transaction, until it returns 0): rows it created go, rows it made due get
    their cool-down back, a remote delete it replaced comes back; work in flight finishes. How
    many rows it untagged."""
    rows = conn.execute("SELECT path, job_prior_due, job_prior_op, state, leased_until "
                        "FROM queue WHERE job = ? LIMIT ?", (job, limit)).fetchall()
    for path, prior, prior_op, state, leased in rows:
        free = state == "pending" and (leased is None or leased <= now)
        if free and prior is None:
            conn.execute("DELETE FROM queue WHERE path = ?", (path,))
            continue
        if free:
            conn.execute("UPDATE queue SET op = COALESCE(?, op), not_before = ?, updated = ?, "
                         "attempts = 0 WHERE path = ?", (prior_op, prior, now, path))
        conn.execute("UPDATE queue SET job = NULL, job_prior_due = NULL, job_prior_op = NULL "
                     "WHERE path = ?", (path,))
    return len(rows)


def set_remote(conn: sqlite3.Connection, path: str, remote: str) -> None:
    """Send the path's queued upload to another remote (the storage plan changed)."""
    conn.execute("UPDATE queue SET remote = ? WHERE path = ?", (remote, path))


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


def job_pending(conn: sqlite3.Connection, job: int) -> bool:
    """Whether any of the job's rows is still to be worked (failed ones are its errors)."""
    return conn.execute("SELECT 1 FROM queue WHERE job = ? AND state = 'pending' LIMIT 1",
                        (job,)).fetchone() is not None


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


def failed_page(conn: sqlite3.Connection, after: str, limit: int) -> list[Entry]:
    """Failed rows in path order after `after` (the admin page's list, a page at a time)."""
    # Named, or SQLite sorts every failed row to return a page (0.3 s with 100k of them).
    rows = conn.execute(f"SELECT {_COLUMNS} FROM queue INDEXED BY queue_failed "
                        "WHERE state = 'failed' AND path > ? ORDER BY path LIMIT ?",
                        (after, limit)).fetchall()
    return [Entry(*row) for row in rows]


def retry(conn: sqlite3.Connection, path: str | None, now: float) -> int:
    """Make failed rows (one path's, or all with None) due now with fresh attempts; how many."""
    where, args = ("AND path = ?", (path,)) if path is not None else ("", ())
    return conn.execute(
        "UPDATE queue SET state = 'pending', attempts = 0, not_before = ?, updated = ? "
        f"WHERE state = 'failed' {where}", (now, now, *args)
    ).rowcount
