"""The queue table in PostgreSQL: one row per path with remote work to do (see
`registry/queue.py` for why one row per path).

Leasing is `SELECT ... FOR UPDATE SKIP LOCKED`: rows another transaction is leasing at that
moment are passed over, never waited for, so two leasers (two workers, two processes, two nodes)
never take the same row and never queue behind each other. The other read-then-write methods
(`upload_now`, `release_job`, `finish`, `fail`) read the row and rewrite it in the same
transaction, under the registry lock (see `registry.py`), as SQLite's single writer ran them.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..counters import MAX_CHAR
from ..queue import _COLUMNS, Entry
from .link import Link

_Q_COLUMNS = ", ".join(f"q.{column.strip()}" for column in _COLUMNS.split(","))
_LISTING_PAGE = 500


# Where a row is workable by this node: a remote delete by any node; an upload by a node
# whose disk holds the bytes (files.holder or files.replica, migration 13, whose first node
# claimed the rows from before it), or by anyone when the file is gone meanwhile (the worker
# then drops it). The lease makes one of the two holders upload, whichever takes it.
_WORKABLE = ("(q.op <> 'upload' OR NOT EXISTS (SELECT 1 FROM files f WHERE f.path = q.path "
             "AND f.holder <> %(node)s AND f.replica <> %(node)s))")


class QueueRows:
    """The cluster's queue; this node (`node`) leases the rows it can work (`_WORKABLE`), and
    clears only its own leases."""

    def __init__(self, link: Link, node: str) -> None:
        self._link = link
        self._node = node

    def get(self, path: str) -> Entry | None:
        row = self._link.one(f"SELECT {_COLUMNS} FROM queue WHERE path = %s", (path,))
        return Entry(*row) if row else None

    def schedule(self, path: str, op: str, version: int, remote: str,
                 not_before: float, now: float) -> None:
        self._link.execute(
            "INSERT INTO queue (path, op, version, remote, not_before, attempts, state, created, "
            "updated) VALUES (%s, %s, %s, %s, %s, 0, 'pending', %s, %s) "
            "ON CONFLICT (path) DO UPDATE SET op = excluded.op, version = excluded.version, "
            "remote = excluded.remote, not_before = excluded.not_before, attempts = 0, "
            "state = 'pending', last_error = NULL, updated = excluded.updated, job = NULL, "
            "job_prior_due = NULL, job_prior_op = NULL",
            (path, op, version, remote, not_before, now, now))

    def upload_now(self, path: str, version: int, remote: str, now: float,
                   job: int | None = None) -> None:
        current = self.get(path)
        if current is not None and current.op == "upload" and current.version == version:
            self._link.execute(
                "UPDATE queue SET job = COALESCE(%s, job), job_prior_due = CASE WHEN job IS "
                "NOT NULL THEN job_prior_due ELSE not_before END, not_before = %s, "
                "state = 'pending', attempts = CASE WHEN state = 'failed' THEN 0 ELSE attempts "
                "END, updated = %s WHERE path = %s", (job, now, now, path))
            return
        self.schedule(path, "upload", version, remote, now, now)
        if job is not None:
            replaced = current if current is not None and current.op == "delete" else None
            self._link.execute(
                "UPDATE queue SET job = %s, job_prior_due = %s, job_prior_op = %s "
                "WHERE path = %s", (job, replaced.not_before if replaced else None,
                                    "delete" if replaced else None, path))

    def release_job(self, job: int, now: float, limit: int = 1000) -> int:
        rows = self._link.rows("SELECT path, job_prior_due, job_prior_op, state, leased_until "
                               "FROM queue WHERE job = %s LIMIT %s", (job, limit))
        for path, prior, prior_op, state, leased in rows:
            free = state == "pending" and (leased is None or leased <= now)
            if free and prior is None:
                self._link.execute("DELETE FROM queue WHERE path = %s", (path,))
                continue
            if free:
                self._link.execute("UPDATE queue SET op = COALESCE(%s, op), not_before = %s, "
                                   "updated = %s, attempts = 0 WHERE path = %s",
                                   (prior_op, prior, now, path))
            self._link.execute("UPDATE queue SET job = NULL, job_prior_due = NULL, "
                               "job_prior_op = NULL WHERE path = %s", (path,))
        return len(rows)

    def set_remote(self, path: str, remote: str) -> None:
        self._link.execute("UPDATE queue SET remote = %s WHERE path = %s", (remote, path))

    def drop(self, path: str) -> bool:
        return self._link.count("DELETE FROM queue WHERE path = %s", (path,)) > 0

    def lease_due(self, owner: str, now: float, until: float, limit: int) -> list[Entry]:
        """Take up to `limit` due, pending, unleased rows for `owner` until `until`, skipping
        the rows another transaction holds."""
        rows = self._link.rows(
            "WITH due AS (SELECT path FROM queue q WHERE state = 'pending' "
            "AND not_before <= %(now)s AND (leased_until IS NULL OR leased_until <= %(now)s) "
            f"AND {_WORKABLE} ORDER BY not_before LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "UPDATE queue q SET leased_until = %(until)s, lease_owner = %(owner)s FROM due "
            f"WHERE q.path = due.path RETURNING {_Q_COLUMNS}",
            {"now": now, "limit": limit, "until": until, "owner": owner, "node": self._node})
        return sorted((Entry(*row) for row in rows), key=lambda e: (e.not_before, e.path))

    def renew(self, owner: str, paths: list[str], until: float) -> None:
        self._link.execute(
            "UPDATE queue SET leased_until = %s WHERE path = ANY(%s) AND lease_owner = %s",
            (until, paths, owner))

    def is_current(self, entry: Entry) -> bool:
        now = self.get(entry.path)
        return (now is not None and now.op == entry.op and now.version == entry.version
                and now.lease_owner == entry.lease_owner)

    def job_pending(self, job: int) -> bool:
        return self._link.one("SELECT 1 FROM queue WHERE job = %s AND state = 'pending' "
                              "LIMIT 1", (job,)) is not None

    def finish(self, entry: Entry) -> None:
        if self.is_current(entry):
            self.drop(entry.path)
        else:
            self.release(entry)

    def release(self, entry: Entry) -> None:
        self._link.execute("UPDATE queue SET leased_until = NULL, lease_owner = NULL "
                           "WHERE path = %s AND lease_owner = %s",
                           (entry.path, entry.lease_owner))

    def release_stray(self, owner: str, keep: list[str]) -> int:
        return self._link.execute(
            "UPDATE queue SET leased_until = NULL, lease_owner = NULL WHERE lease_owner = %s "
            "AND NOT (path = ANY(%s))", (owner, keep)).rowcount

    def fail(self, entry: Entry, error: str, retry_at: float | None, now: float) -> None:
        if not self.is_current(entry):
            self.release(entry)
            return
        self._link.execute(
            "UPDATE queue SET attempts = attempts + 1, last_error = %s, leased_until = NULL, "
            "lease_owner = NULL, updated = %s, state = %s, "
            "not_before = COALESCE(%s, not_before) WHERE path = %s",
            (error, now, "pending" if retry_at is not None else "failed", retry_at, entry.path))

    def clear_leases(self) -> None:
        """This node's leases (its workers' owners start with "NODE:"): its processes are gone,
        the other nodes' are not. A registry opened for no node ("") clears them all."""
        self._link.execute("UPDATE queue SET leased_until = NULL, lease_owner = NULL "
                           "WHERE leased_until IS NOT NULL AND (%s = '' OR "
                           "starts_with(lease_owner, %s))", (self._node, self._node + ":"))

    def next_due(self, now: float) -> float | None:
        # Both index walks in one statement: one round trip.
        row = self._link.one(
            "SELECT (SELECT not_before FROM queue q WHERE state = 'pending' "
            f"AND (leased_until IS NULL OR leased_until <= %(now)s) AND {_WORKABLE} "
            "ORDER BY not_before LIMIT 1), "
            "(SELECT MIN(leased_until) FROM queue WHERE leased_until > %(now)s)",
            {"now": now, "node": self._node})
        times = [float(t) for t in (row or ()) if t is not None]
        return min(times) if times else None

    def listing(self, failed_only: bool = False) -> Iterator[Entry]:
        """Every row (or every failed one) in due order, a page at a time (keyset on
        (not_before, path)), so no result set or server-side cursor holds the whole queue."""
        where = "state = 'failed' AND " if failed_only else ""
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            rows = self._link.rows(
                f"SELECT {_COLUMNS} FROM queue WHERE {where}(not_before, path) > (%s, %s) "
                "ORDER BY not_before, path LIMIT %s", (*after, _LISTING_PAGE))
            entries = [Entry(*row) for row in rows]
            yield from entries
            if len(entries) < _LISTING_PAGE:
                return
            after = (entries[-1].not_before, entries[-1].path)

    def failed_page(self, after: str, limit: int) -> list[Entry]:
        # The partial index `queue_failed` serves it; PostgreSQL's planner picks it unasked.
        rows = self._link.rows(f"SELECT {_COLUMNS} FROM queue WHERE state = 'failed' "
                               "AND path > %s ORDER BY path LIMIT %s", (after, limit))
        return [Entry(*row) for row in rows]

    def retry(self, path: str | None, now: float) -> int:
        where, args = ("AND path = %s", (path,)) if path is not None else ("", ())
        return self._link.count(
            "UPDATE queue SET state = 'pending', attempts = 0, not_before = %s, updated = %s "
            f"WHERE state = 'failed' {where}", (now, now, *args))

    # -- figures for the statistics (index walks, never a scan of the table) ---------------------

    def recent_errors(self, limit: int) -> list[Entry]:
        rows = self._link.rows(f"SELECT {_COLUMNS} FROM queue WHERE last_error IS NOT NULL "
                               "ORDER BY updated DESC LIMIT %s", (limit,))
        return [Entry(*row) for row in rows]

    def count_uploads(self, *, due: bool, now: float, cap: int) -> int:
        where = "not_before <= %s" if due else "not_before > %s"
        return int(self._link.value(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM queue WHERE state = 'pending' AND {where} "
            "AND op = 'upload' LIMIT %s) AS capped", (now, cap)))

    def uploads_in_flight(self, now: float) -> int:
        return int(self._link.value("SELECT COUNT(*) FROM queue WHERE leased_until > %s AND "
                                    "op = 'upload'", (now,)))

    def oldest_due(self, op: str) -> float | None:
        value = self._link.value("SELECT MIN(not_before) FROM queue WHERE state = 'pending' "
                                 "AND op = %s", (op,))
        return None if value is None else float(value)

    def unprotected_oldest(self) -> tuple[str, float] | None:
        row = self._link.one("SELECT path, written FROM queue WHERE op = 'upload' "
                             "AND written IS NOT NULL ORDER BY written LIMIT 1")
        return None if row is None else (row[0], float(row[1]))

    def failed_oldest(self, op: str) -> tuple[str, float] | None:
        row = self._link.one("SELECT path, updated FROM queue WHERE state = 'failed' "
                             "AND op = %s AND updated IS NOT NULL ORDER BY updated LIMIT 1",
                             (op,))
        return None if row is None else (row[0], float(row[1]))

    def count_by_remote(self) -> dict[str, int]:
        return {remote: int(count) for remote, count in self._link.rows(
            "SELECT remote, count(*) FROM queue GROUP BY remote")}

    def count_under(self, prefix: str) -> tuple[int, int]:
        row = self._link.one(
            "SELECT count(*) FILTER (WHERE state != 'failed'), "
            "count(*) FILTER (WHERE state = 'failed') FROM queue WHERE path >= %s AND path < %s",
            (prefix, prefix + MAX_CHAR))
        assert row is not None
        return int(row[0]), int(row[1])

    def deletes_to(self, remote: str) -> int:
        return int(self._link.value("SELECT count(*) FROM queue WHERE op = 'delete' AND "
                                    "remote = %s", (remote,)))
