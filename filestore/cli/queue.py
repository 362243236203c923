"""`filestore queue list|retry|drop`: the queue of uploads and remote deletes."""

from __future__ import annotations

import json
import sys
import time

import anyio
import click

from ..config import Settings
from ..registry import in_flight
from ..service import Service
from .base import command, main


@main.group()
def queue() -> None:
    """The queue of uploads and remote deletes."""


@queue.command("list")
@click.option("--failed", is_flag=True, help="Only the entries that failed for good.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries.")
@command
def queue_list(settings: Settings, failed: bool, as_json: bool) -> None:
    """List queued work in due order (streamed: fine with millions of entries)."""
    with Service.opened(settings, read_only=True) as service:
        if as_json:
            click.echo("[")
        for n, entry in enumerate(service.queued(failed)):
            if as_json:
                item = {"path": entry.path, "op": entry.op, "state": entry.state,
                        "attempts": entry.attempts, "due": entry.not_before,
                        "in_flight": in_flight(entry, time.time()),
                        "last_error": entry.last_error}
                click.echo(("," if n else "") + json.dumps(item))
            else:
                due = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.not_before))
                error = f"  ({entry.last_error})" if entry.last_error else ""
                click.echo(f"{entry.state:8} {entry.op:7} {entry.attempts:3} tries  due {due}  "
                           f"{entry.path}{error}")
        if as_json:
            click.echo("]")


@queue.command("retry")
@click.argument("path", required=False)
@click.option("--all", "every", is_flag=True, help="Every failed entry.")
@command
def queue_retry(settings: Settings, path: str | None, every: bool) -> None:
    """Give a failed entry (or --all) fresh attempts, due now. A running server takes it up
    within a minute."""
    if (path is None) == (not every):
        raise click.UsageError("give a PATH or --all, not both")
    with Service.opened(settings) as service:
        count = anyio.run(service.retry, None if every else path or "")
    click.echo(f"queue: {count} failed entr{'y' if count == 1 else 'ies'} due again")
    if path is not None and count == 0:
        sys.exit(1)


@queue.command("drop")
@click.argument("path")
@command
def queue_drop(settings: Settings, path: str) -> None:
    """Forget a path's queued work. A dropped upload leaves the file local until it is
    written again or moved to the cloud; a dropped remote delete leaves the remote copy."""
    with Service.opened(settings) as service:
        dropped = anyio.run(service.drop, path)
    click.echo(f"queue: {'dropped' if dropped else 'nothing queued for'} {path}")
    if not dropped:
        sys.exit(1)

