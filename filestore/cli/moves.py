"""`filestore move-to-cloud` and `move-to-local`: the admin page's jobs, from a shell, with a
progress bar (`--wait`)."""

from __future__ import annotations

import sys
import time

import anyio
import click

from ..config import Settings
from ..registry import Job
from ..service import Service
from ..stats import size_text
from .base import command, main


@main.command("move-to-cloud")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@command
def move_to_cloud(settings: Settings, wait: bool) -> None:
    """Upload every local file now, skipping its cool-down (the admin page's job). Run by the
    server on this data directory; with --wait and no server, run here."""
    _move(settings, "move-to-cloud", False, wait)


@main.command("move-to-local")
@click.option("--delete-remote", is_flag=True,
              help="Delete each cloud copy once its local copy is verified.")
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@command
def move_to_local(settings: Settings, delete_remote: bool, wait: bool) -> None:
    """Download every file only the cloud holds into the local store, verified, and keep it
    local (the admin page's job). Refused when it would not fit above storage.min_free."""
    _move(settings, "move-to-local", delete_remote, wait)


def _move(settings: Settings, kind: str, delete_remote: bool, wait: bool) -> None:
    with Service.opened(settings) as service:
        job = anyio.run(service.start_move, kind, delete_remote)
        follow(service, job, wait)


def follow(service: Service, job: Job, wait: bool) -> None:
    """Say the job started; with `wait`, show its progress until it ends (running it here when
    no server runs on the data directory), then its result (exit 1 unless it was done)."""
    kind = job.kind
    served = not service.alone
    click.echo(f"{kind}: job {job.id} started")
    if not wait:
        click.echo("a server on this data directory runs it; `filestore stats` shows its "
                   "progress" if served else "no server runs on this data directory: the "
                   "job starts with the next `filestore serve` (or use --wait to run it "
                   "here)")
        return
    try:
        if served:
            with JobProgress(job) as progress:
                while progress.show(service.job(job.id)):
                    time.sleep(0.5)
        else:
            anyio.run(_run_here, service, job)
    except KeyboardInterrupt:
        if served:
            click.echo(f"\n{kind}: stopped watching; job {job.id} goes on in the server")
        else:
            anyio.run(service.cancel_move, job.id)
            click.echo(f"\n{kind}: job {job.id} cancelled (no server runs to carry it on)")
        sys.exit(130)
    final = service.job(job.id)
    click.echo(f"{kind}: job {final.id} {final.state}: {final.done:,} files "
               f"({size_text(final.bytes)}), {final.errors:,} errors"
               + (f"; last error: {final.last_error}" if final.last_error else ""))
    if final.state != "done" or final.errors:
        sys.exit(1)


async def _run_here(service: Service, job: Job) -> None:
    """Run the job in this process (no server is running), showing its progress."""
    async with service.working(), anyio.create_task_group() as tg:
        tg.start_soon(_show_progress, service, job)
        await service.run_move_here(job.id)
        tg.cancel_scope.cancel()


async def _show_progress(service: Service, job: Job) -> None:
    with JobProgress(job) as progress:
        while progress.show(service.job(job.id)):
            await anyio.sleep(0.5)


class JobProgress:
    """A progress bar for a move job: bytes, files, rate and time left, on stderr."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.started = time.monotonic()
        self.bar = click.progressbar(length=max(job.total_bytes, 1), label=job.kind,
                                     file=sys.stderr, show_eta=True, show_percent=True,
                                     item_show_func=self._text)

    def __enter__(self) -> JobProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def _text(self, _: object) -> str:
        job = self.job
        rate = job.bytes / max(time.monotonic() - self.started, 1e-3)
        return (f"{job.done:,}/{job.total:,} files, {size_text(job.bytes)}, "
                f"{size_text(int(rate))}/s" + (f", {job.errors:,} errors" if job.errors else ""))

    def show(self, job: Job) -> bool:
        """Draw `job`'s progress; whether it is still going."""
        self.job = job
        self.bar.length = max(job.total_bytes, job.bytes, 1)
        self.bar.update(job.bytes - self.bar.pos, job)
        return job.active

