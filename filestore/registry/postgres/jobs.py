"""The jobs table in PostgreSQL (see `registry/jobs.py`: moves and purges, leased by the process
that runs them, at most one active at a time).

"At most one active job" is a check followed by an insert (`create`): it holds because every
write transaction runs under the registry lock (see `registry.py`), as SQLite's single writer ran
it. A lease is taken with `FOR UPDATE SKIP LOCKED`, so a process looking for a job never waits
for another that is taking it.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import Conflict, NotFound
from ..jobs import _COLUMNS, KINDS, LEASE_SECONDS, Job
from .link import Link


class JobRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def get(self, job_id: int) -> Job:
        row = self._link.one(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        if row is None:
            raise NotFound(f"no job {job_id}")
        return Job(*row)

    def active(self) -> Job | None:
        row = self._link.one(f"SELECT {_COLUMNS} FROM jobs WHERE state IN "
                             "('queued', 'running') ORDER BY id LIMIT 1")
        return Job(*row) if row else None

    def recent(self, limit: int = 10) -> list[Job]:
        return [Job(*row) for row in self._link.rows(
            f"SELECT {_COLUMNS} FROM jobs ORDER BY id DESC LIMIT %s", (limit,))]

    def create(self, kind: str, options: dict[str, Any], total: int,
               total_bytes: int, now: float) -> Job:
        if kind not in KINDS:
            raise ValueError(kind)
        running = self.active()
        if running is not None:
            raise Conflict(f"job {running.id} ({running.kind}) is {running.state}; wait for it or "
                           "cancel it first")
        job_id = self._link.value(
            "INSERT INTO jobs (kind, state, options, total, total_bytes, created, updated) "
            "VALUES (%s, 'queued', %s, %s, %s, %s, %s) RETURNING id",
            (kind, json.dumps(options), total, total_bytes, now, now))
        return self.get(int(job_id))

    def lease(self, owner: str, now: float) -> Job | None:
        row = self._link.one(
            "SELECT id FROM jobs WHERE state IN ('queued', 'running') "
            "AND (leased_until IS NULL OR leased_until <= %s OR lease_owner = %s) "
            "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (now, owner))
        if row is None:
            return None
        self._link.execute(
            "UPDATE jobs SET state = 'running', leased_until = %s, lease_owner = %s, "
            "updated = %s WHERE id = %s", (now + LEASE_SECONDS, owner, now, row[0]))
        return self.get(int(row[0]))

    def holds(self, job_id: int, owner: str) -> bool:
        row = self._link.one("SELECT state, lease_owner FROM jobs WHERE id = %s", (job_id,))
        return row is not None and row[0] == "running" and row[1] == owner

    def renew(self, job_id: int, owner: str, now: float) -> None:
        self._link.execute("UPDATE jobs SET leased_until = %s WHERE id = %s AND "
                           "lease_owner = %s AND state = 'running'",
                           (now + LEASE_SECONDS, job_id, owner))

    def release(self, job_id: int, owner: str) -> None:
        self._link.execute("UPDATE jobs SET leased_until = NULL, lease_owner = NULL "
                           "WHERE id = %s AND lease_owner = %s", (job_id, owner))

    def scanned_to(self, job_id: int, cursor: str, *, files: int = 0,
                   size: int = 0, finished: bool = False, now: float) -> None:
        self._link.execute(
            "UPDATE jobs SET cursor = %s, scanned = %s, total = total + %s, "
            "total_bytes = total_bytes + %s, updated = %s WHERE id = %s",
            (cursor, int(finished), files, size, now, job_id))

    def set_totals(self, job_id: int, files: int, size: int) -> None:
        self._link.execute("UPDATE jobs SET total = %s, total_bytes = %s WHERE id = %s",
                           (files, size, job_id))

    def progress(self, job_id: int, *, done: int = 0, size: int = 0,
                 errors: int = 0, error: str | None = None, now: float) -> None:
        self._link.execute(
            "UPDATE jobs SET done = done + %s, bytes = bytes + %s, errors = errors + %s, "
            "last_error = COALESCE(%s, last_error), updated = %s WHERE id = %s "
            "AND state IN ('queued', 'running')", (done, size, errors, error, now, job_id))

    def finish(self, job_id: int, state: str, now: float, error: str | None = None) -> None:
        self._link.execute(
            "UPDATE jobs SET state = %s, finished = %s, updated = %s, leased_until = NULL, "
            "last_error = COALESCE(%s, last_error) WHERE id = %s "
            "AND state IN ('queued', 'running')", (state, now, now, error, job_id))

    def cancel(self, job_id: int, now: float) -> Job:
        job = self.get(job_id)
        if not job.active:
            raise Conflict(f"job {job_id} is already {job.state}")
        self.finish(job_id, "cancelled", now)
        return self.get(job_id)
