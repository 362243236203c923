"""The jobs table: move-to-cloud, move-to-local and purge-account (`queue/purge.py`), persisted
so they survive a restart.

A job is a row with a state, figures and a scan cursor. Whichever process runs it holds a lease
on the row (renewed while it works), so a job survives its process: after a crash or a restart
the lease runs out and a server takes it up again, resuming after the cursor. At most one job
runs at a time: the two moves undo each other, and one is enough to keep the disk and the
network busy.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

from ..errors import Conflict, NotFound

KINDS = ("move-to-cloud", "move-to-local", "purge-account")
ACTIVE = ("queued", "running")
LEASE_SECONDS = 30.0

_COLUMNS = ("id, kind, state, options, total, total_bytes, done, bytes, errors, last_error, "
            "cursor, scanned, created, updated, finished, leased_until, lease_owner")


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: str
    options: str
    total: int
    total_bytes: int
    done: int
    bytes: int
    errors: int
    last_error: str | None
    cursor: str
    scanned: int
    created: float
    updated: float
    finished: float | None
    leased_until: float | None
    lease_owner: str | None

    @property
    def option(self) -> dict[str, Any]:
        return dict(json.loads(self.options)) if self.options else {}

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def public(self) -> dict[str, Any]:
        """What the page and the API show."""
        progress = None
        if self.total_bytes:
            progress = min(self.bytes / self.total_bytes, 1.0)
        elif self.total:
            progress = min(self.done / self.total, 1.0)
        elif self.scanned:
            progress = 1.0
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "options": self.option,
            "total": self.total, "total_bytes": self.total_bytes, "done": self.done,
            "bytes": self.bytes, "errors": self.errors, "last_error": self.last_error,
            "scanning": not self.scanned, "progress": progress,
            "created": self.created, "updated": self.updated, "finished": self.finished,
        }



class JobRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, job_id: int) -> Job:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return Job(*row)

    def active(self) -> Job | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state IN "
                                 "('queued', 'running') ORDER BY id LIMIT 1").fetchone()
        return Job(*row) if row else None

    def recent(self, limit: int = 10) -> list[Job]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job(*row) for row in rows]

    def create(self, kind: str, options: dict[str, Any], total: int,
               total_bytes: int, now: float) -> Job:
        """A new queued job; refused (409) while another move is queued or running."""
        if kind not in KINDS:
            raise ValueError(kind)
        running = self.active()
        if running is not None:
            raise Conflict(f"job {running.id} ({running.kind}) is {running.state}; wait for it or "
                           "cancel it first")
        cursor = self._conn.execute(
            "INSERT INTO jobs (kind, state, options, total, total_bytes, created, updated) "
            "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
            (kind, json.dumps(options), total, total_bytes, now, now),
        )
        return self.get(int(cursor.lastrowid or 0))

    def lease(self, owner: str, now: float) -> Job | None:
        """Take the active job if nobody holds it (or its holder's lease ran out)."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') "
            "AND (leased_until IS NULL OR leased_until <= ? OR lease_owner = ?) "
            "ORDER BY id LIMIT 1",
            (now, owner),
        ).fetchone()
        if row is None:
            return None
        job = Job(*row)
        self._conn.execute("UPDATE jobs SET state = 'running', leased_until = ?, lease_owner = ?, "
                           "updated = ? WHERE id = ?", (now + LEASE_SECONDS, owner, now, job.id))
        return self.get(job.id)

    def holds(self, job_id: int, owner: str) -> bool:
        """Whether `owner` still runs the job (it was not cancelled, nor taken over)."""
        row = self._conn.execute("SELECT state, lease_owner FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
        return row is not None and row[0] == "running" and row[1] == owner

    def renew(self, job_id: int, owner: str, now: float) -> None:
        self._conn.execute("UPDATE jobs SET leased_until = ? WHERE id = ? AND lease_owner = ? "
                           "AND state = 'running'", (now + LEASE_SECONDS, job_id, owner))

    def release(self, job_id: int, owner: str) -> None:
        """Let go of a running job at shutdown, so the next process takes it up at once."""
        self._conn.execute("UPDATE jobs SET leased_until = NULL, lease_owner = NULL WHERE id = ? "
                           "AND lease_owner = ?", (job_id, owner))

    def scanned_to(self, job_id: int, cursor: str, *, files: int = 0,
                   size: int = 0, finished: bool = False, now: float) -> None:
        """The scan went up to `cursor`, taking on `files` more files of `size` bytes."""
        self._conn.execute(
            "UPDATE jobs SET cursor = ?, scanned = ?, total = total + ?, total_bytes = total_bytes "
            "+ ?, updated = ? WHERE id = ?",
            (cursor, int(finished), files, size, now, job_id),
        )

    def set_totals(self, job_id: int, files: int, size: int) -> None:
        self._conn.execute("UPDATE jobs SET total = ?, total_bytes = ? WHERE id = ?",
                           (files, size, job_id))

    def progress(self, job_id: int, *, done: int = 0, size: int = 0,
                 errors: int = 0, error: str | None = None, now: float) -> None:
        """Count files the job itself moved (move-to-local) or failed to move."""
        self._conn.execute(
            "UPDATE jobs SET done = done + ?, bytes = bytes + ?, errors = errors + ?, "
            "last_error = COALESCE(?, last_error), updated = ? WHERE id = ? "
            "AND state IN ('queued', 'running')",
            (done, size, errors, error, now, job_id),
        )

    def finish(self, job_id: int, state: str, now: float,
               error: str | None = None) -> None:
        self._conn.execute(
            "UPDATE jobs SET state = ?, finished = ?, updated = ?, leased_until = NULL, "
            "last_error = COALESCE(?, last_error) WHERE id = ? AND state IN ('queued', 'running')",
            (state, now, now, error, job_id),
        )

    def cancel(self, job_id: int, now: float) -> Job:
        """Stop a job: its runner sees the state at its next step and stops there."""
        job = self.get(job_id)
        if not job.active:
            raise Conflict(f"job {job_id} is already {job.state}")
        self.finish(job_id, "cancelled", now)
        return self.get(job_id)
