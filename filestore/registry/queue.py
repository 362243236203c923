"""The queue table: one row per path with remote work to do (an upload or a remote delete).

One row per path, not one table per kind of work, because the work for one path must happen in
order and never concurrently: an older upload racing a newer one could leave the older bytes in the
bucket, and a remote delete racing a re-upload could delete the new copy. So a PUT or DELETE
rewrites the path's row (op, version, due time) and keeps its lease: work already in flight
finishes, finds its version superseded, records nothing, and frees the row for the new work.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator

from .counters import MAX_CHAR

_COLUMNS = ("path, op, version, remote, not_before, attempts, state, leased_until, lease_owner, "
            "last_error, updated")


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
    updated: float | None = None  # when the row last changed (a failed attempt, say)


def in_flight(entry: Entry | None, now: float) -> bool:
    return entry is not None and entry.leased_until is not None and entry.leased_until > now



class QueueRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, path: str) -> Entry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM queue WHERE path = ?", (path,)).fetchone()
        return Entry(*row) if row else None

    def schedule(self, path: str, op: str, version: int, remote: str,
                 not_before: float, now: float) -> None:
        """Make `op` for `version` the path's next remote work, due at `not_before`; a lease held
        by work in flight is kept, so that work finishes before this starts."""
        self._conn.execute(
            "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, created, "
            "updated) VALUES (?, ?, ?, ?, ?, 0, 'pending', ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET op = excluded.op, version = excluded.version, "
            "remote = excluded.remote, not_before = excluded.not_before, attempts = 0, "
            "state = 'pending', last_error = NULL, updated = excluded.updated, job = NULL, "
            "job_prior_due = NULL, job_prior_op = NULL",
            (path, op, version, remote, not_before, now, now),
        )

    def upload_now(self, path: str, version: int, remote: str, now: float,
                   job: int | None = None) -> None:
        """Make the upload of `version` due now, skipping its cool-down ("upload now", or on behalf
        of move job `job`). A queued upload of that version keeps its lease, and for a job remembers
        its cool-down (a cancel restores it); other work is replaced, as a PUT would replace it."""
        current = self.get(path)
        if current is not None and current.op == "upload" and current.version == version:
            self._conn.execute(
                "UPDATE queue SET job = COALESCE(?, job), job_prior_due = CASE WHEN job IS NOT "
                "NULL THEN job_prior_due ELSE not_before END, not_before = ?, state = 'pending', "
                "attempts = CASE WHEN state = 'failed' THEN 0 ELSE attempts END, updated = ? "
                "WHERE path = ?",
                (job, now, now, path),
            )
            return
        self.schedule(path, "upload", version, remote, now, now)
        if job is not None:
            # A remote delete this upload replaces comes back if the job is cancelled.
            replaced = current if current is not None and current.op == "delete" else None
            self._conn.execute("UPDATE queue SET job = ?, job_prior_due = ?, job_prior_op = ? "
                               "WHERE path = ?", (job, replaced.not_before if replaced else None,
                                                  "delete" if replaced else None, path))

    def release_job(self, job: int, now: float, limit: int = 1000) -> int:
        """Undo what a cancelled move job queued and not yet started, up to `limit` rows (call it
        again, in a new transaction, until it returns 0): rows it created go, rows it made due get
        their cool-down back, a remote delete it replaced comes back; work in flight finishes. How
        many rows it untagged."""
        rows = self._conn.execute("SELECT path, job_prior_due, job_prior_op, state, leased_until "
                                  "FROM queue WHERE job = ? LIMIT ?", (job, limit)).fetchall()
        for path, prior, prior_op, state, leased in rows:
            free = state == "pending" and (leased is None or leased <= now)
            if free and prior is None:
                self._conn.execute("DELETE FROM queue WHERE path = ?", (path,))
                continue
            if free:
                self._conn.execute("UPDATE queue SET op = COALESCE(?, op), not_before = ?, "
                                   "updated = ?, attempts = 0 WHERE path = ?",
                                   (prior_op, prior, now, path))
            self._conn.execute("UPDATE queue SET job = NULL, job_prior_due = NULL, "
                               "job_prior_op = NULL WHERE path = ?", (path,))
        return len(rows)

    def set_remote(self, path: str, remote: str) -> None:
        """Send the path's queued upload to another remote (the storage plan changed)."""
        self._conn.execute("UPDATE queue SET remote = ? WHERE path = ?", (remote, path))

    def drop(self, path: str) -> bool:
        return self._conn.execute("DELETE FROM queue WHERE path = ?", (path,)).rowcount > 0

    def lease_due(self, owner: str, now: float, until: float,
                  limit: int) -> list[Entry]:
        """Take up to `limit` due, pending, unleased rows for `owner` until `until`."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM queue WHERE state = 'pending' AND not_before <= ? "
            "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY not_before LIMIT ?",
            (now, now, limit),
        ).fetchall()
        entries = [Entry(*row) for row in rows]
        self._conn.executemany(
            "UPDATE queue SET leased_until = ?, lease_owner = ? WHERE path = ?",
            [(until, owner, e.path) for e in entries],
        )
        return [dataclasses.replace(e, leased_until=until, lease_owner=owner) for e in entries]

    def renew(self, owner: str, paths: list[str], until: float) -> None:
        self._conn.executemany(
            "UPDATE queue SET leased_until = ? WHERE path = ? AND lease_owner = ?",
            [(until, path, owner) for path in paths],
        )

    def is_current(self, entry: Entry) -> bool:
        """Whether the row still asks for exactly the work `entry` was leased for."""
        now = self.get(entry.path)
        return (now is not None and now.op == entry.op and now.version == entry.version
                and now.lease_owner == entry.lease_owner)

    def job_pending(self, job: int) -> bool:
        """Whether any of the job's rows is still to be worked (failed ones are its errors)."""
        return self._conn.execute("SELECT 1 FROM queue WHERE job = ? AND state = 'pending' LIMIT 1",
                                  (job,)).fetchone() is not None

    def finish(self, entry: Entry) -> None:
        """Done: remove the row if it still asks for this work, else free it for the newer work."""
        if self.is_current(entry):
            self.drop(entry.path)
        else:
            self.release(entry)

    def release(self, entry: Entry) -> None:
        self._conn.execute(
            "UPDATE queue SET leased_until = NULL, lease_owner = NULL WHERE path = ? "
            "AND lease_owner = ?",
            (entry.path, entry.lease_owner),
        )

    def release_stray(self, owner: str, keep: list[str]) -> int:
        """Release `owner`'s leases but those of `keep` (its work in flight): leases an outage
        kept it from releasing, or took for it with the answer lost. How many."""
        marks = ", ".join("?" * len(keep))
        return self._conn.execute(
            "UPDATE queue SET leased_until = NULL, lease_owner = NULL WHERE lease_owner = ? "
            f"AND path NOT IN ({marks})", (owner, *keep)).rowcount

    def fail(self, entry: Entry, error: str, retry_at: float | None,
             now: float) -> None:
        """Count a failed attempt: retry at `retry_at`, or (None) mark the row failed."""
        if not self.is_current(entry):
            self.release(entry)  # the work changed meanwhile; the new work starts afresh
            return
        self._conn.execute(
            "UPDATE queue SET attempts = attempts + 1, last_error = ?, leased_until = NULL, "
            "lease_owner = NULL, updated = ?, state = ?, not_before = COALESCE(?, not_before) "
            "WHERE path = ?",
            (error, now, "pending" if retry_at is not None else "failed", retry_at, entry.path),
        )

    def clear_leases(self) -> None:
        """After a crash, when no other process is live: every lease is stale."""
        self._conn.execute("UPDATE queue SET leased_until = NULL, lease_owner = NULL "
                           "WHERE leased_until IS NOT NULL")

    def next_due(self, now: float) -> float | None:
        """When the earliest pending row becomes workable: the first free row's due time, or the
        first lease to expire (a crashed process's). Both are index walks, not scans."""
        free = self._conn.execute(
            "SELECT not_before FROM queue WHERE state = 'pending' "
            "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY not_before LIMIT 1",
            (now,),
        ).fetchone()
        lease = self._conn.execute(
            "SELECT MIN(leased_until) FROM queue WHERE leased_until > ?", (now,)
        ).fetchone()
        times = [t for t in (free[0] if free else None, lease[0] if lease else None)
                 if t is not None]
        return min(times) if times else None

    def listing(self, failed_only: bool = False) -> Iterator[Entry]:
        """Every row (or every failed one), in due order: streamed, however many there are."""
        where = "WHERE state = 'failed' " if failed_only else ""
        for row in self._conn.execute(
                f"SELECT {_COLUMNS} FROM queue {where}ORDER BY not_before, path"):
            yield Entry(*row)

    def failed_page(self, after: str, limit: int) -> list[Entry]:
        """Failed rows in path order after `after` (the admin page's list, a page at a time)."""
        # Named, or SQLite sorts every failed row to return a page (0.3 s with 100k of them).
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM queue INDEXED BY queue_failed "
                                  "WHERE state = 'failed' AND path > ? ORDER BY path LIMIT ?",
                                  (after, limit)).fetchall()
        return [Entry(*row) for row in rows]

    def retry(self, path: str | None, now: float) -> int:
        """Make failed rows (one path's, or all with None) due now with fresh attempts; how many."""
        where, args = ("AND path = ?", (path,)) if path is not None else ("", ())
        return self._conn.execute(
            "UPDATE queue SET state = 'pending', attempts = 0, not_before = ?, updated = ? "
            f"WHERE state = 'failed' {where}", (now, now, *args)
        ).rowcount

    # -- figures for the statistics (index walks, never a scan of the table) ---------------------

    def recent_errors(self, limit: int) -> list[Entry]:
        """The rows that failed at least once, the latest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM queue WHERE last_error IS NOT NULL "
            "ORDER BY updated DESC LIMIT ?", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def count_uploads(self, *, due: bool, now: float, cap: int) -> int:
        """Pending uploads due by `now` (or, `due` false, still cooling down), counted up to
        `cap` from the (state, op, not_before) index."""
        where = "not_before <= ?" if due else "not_before > ?"
        return int(self._conn.execute(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM queue WHERE state = 'pending' AND {where} "
            "AND op = 'upload' LIMIT ?)", (now, cap)).fetchone()[0])

    def uploads_in_flight(self, now: float) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM queue WHERE leased_until > ? AND "
                                      "op = 'upload'", (now,)).fetchone()[0])

    def oldest_due(self, op: str) -> float | None:
        """The earliest due time of a pending `op` (one seek in the (state, op, not_before)
        index, whatever the queue's length)."""
        row = self._conn.execute("SELECT MIN(not_before) FROM queue WHERE state = 'pending' "
                                 "AND op = ?", (op,)).fetchone()
        return None if row[0] is None else float(row[0])

    def unprotected_oldest(self) -> tuple[str, float] | None:
        """Of the files with a queued upload (pending or failed: no verified cloud copy of
        their bytes yet), the one written longest ago: (path, its `modified` time). One seek
        of `queue_unprotected` (migration 8), whatever the queue's length."""
        row = self._conn.execute(
            "SELECT path, written FROM queue INDEXED BY queue_unprotected WHERE op = 'upload' "
            "AND written IS NOT NULL ORDER BY written LIMIT 1").fetchone()
        return None if row is None else (row[0], float(row[1]))

    def failed_oldest(self, op: str) -> tuple[str, float] | None:
        """The failed `op` that failed longest ago (and was not retried since): (path, when its
        last attempt failed). One seek of `queue_failed_since` (migration 8)."""
        row = self._conn.execute(
            "SELECT path, updated FROM queue INDEXED BY queue_failed_since WHERE state = 'failed' "
            "AND op = ? AND updated IS NOT NULL ORDER BY updated LIMIT 1", (op,)).fetchone()
        return None if row is None else (row[0], float(row[1]))

    def count_by_remote(self) -> dict[str, int]:
        """Rows (uploads and deletes) per remote named."""
        return dict(self._conn.execute(
            "SELECT remote, count(*) FROM queue GROUP BY remote").fetchall())

    def count_under(self, prefix: str) -> tuple[int, int]:
        """(pending, failed) rows of the paths under `prefix` (a range scan of the key)."""
        pending, failed = self._conn.execute(
            "SELECT count(*) FILTER (WHERE state != 'failed'), "
            "count(*) FILTER (WHERE state = 'failed') FROM queue WHERE path >= ? AND path < ?",
            (prefix, prefix + MAX_CHAR)).fetchone()
        return int(pending), int(failed)

    def deletes_to(self, remote: str) -> int:
        """Remote deletes queued for `remote`."""
        return int(self._conn.execute("SELECT count(*) FROM queue WHERE op = 'delete' AND "
                                      "remote = ?", (remote,)).fetchone()[0])
