"""The `filestore` command: serve, and maintenance from a shell.

Errors reach the user as one line on stderr (exit 2 for usage and configuration problems, 1 for
anything else); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import click

from . import paths
from .cache.gc import CacheGC
from .config import CONFIG_ENV, Settings, load_settings
from .errors import ConfigError, FilestoreError, RemoteError
from .importer import ImportReport, candidates, import_one
from .queue import entries
from .remote import open_remote
from .stats import report, size_text, snapshot
from .store import DEFAULT_REMOTE, Store

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar=CONFIG_ENV,
    help="TOML config file (default: $FILESTORE_CONFIG, else the embedded default).",
)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command `--config` and `--debug`, load settings, and turn errors into one line."""

    @config_option
    @debug_option
    @functools.wraps(func)
    def wrapper(config_path: str | None, debug: bool, **kwargs: Any) -> Any:
        try:
            settings = load_settings(config_path)
            if config_path:
                # Worker processes and child commands read the same file.
                os.environ[CONFIG_ENV] = os.path.abspath(config_path)
            return func(settings, **kwargs)
        except FilestoreError as exc:
            if debug:
                raise
            click.echo(f"filestore: error: {exc.detail}", err=True)
            sys.exit(2 if isinstance(exc, ConfigError) else 1)
        except OSError as exc:
            if debug:
                raise
            click.echo(f"filestore: error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@contextlib.contextmanager
def opened_store(settings: Settings) -> Iterator[Store]:
    """The store for one command, left again however the command ends."""
    store = Store(settings)
    try:
        yield store
    finally:
        store.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filestore")
def main() -> None:
    """filestore: a caching file-serving proxy with an asynchronous cloud upload queue."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default: server.host).")
@click.option("--port", type=int, default=None, help="Port to bind (default: server.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: server.workers).")
@command
def serve(settings: Settings, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP server (Ctrl-C stops it cleanly)."""
    import uvicorn

    store = Store(settings)  # creates the data directory and the token before workers start
    token_created = store.token_created
    store.close()
    anyio.run(_check_remote, settings)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    click.echo(f"filestore: serving http://{host}:{port}/files/ ({workers} worker(s))")
    click.echo(f"filestore: data directory {settings.data_dir}")
    if settings.auth.token:
        click.echo("filestore: API token from auth.token in the config")
    else:
        click.echo(f"filestore: API token in {store.datadir.token_path} (`filestore token`)")
        if token_created:
            click.echo(f"filestore: new API token: {store.token}")
    uvicorn.run(
        "filestore.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


async def _check_remote(settings: Settings) -> None:
    """Parse and open the remote before serving, so a bad `remote.url` (or an unwritable
    `file://` directory) is a one-line error and exit 2, not a traceback from a worker."""
    remote = open_remote(DEFAULT_REMOTE, settings.remote, settings.data_dir)
    try:
        await remote.open()
    except RemoteError as exc:
        raise ConfigError(f"remote.url: {exc.detail}") from None
    finally:
        await remote.close()


@main.command()
@command
def token(settings: Settings) -> None:
    """Print the API token (generating it on first use)."""
    store = Store(settings)
    store.close()
    click.echo(store.token)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@command
def stats(settings: Settings, as_json: bool) -> None:
    """Where the files are, the cache and the queue (safe while a server runs)."""
    with opened_store(settings) as store:
        figures = snapshot(store.registry.counters(), settings)
    click.echo(json.dumps(figures, indent=2) if as_json else report(figures))


@main.command()
@click.option("--dry-run", is_flag=True, help="Only say how much would be evicted.")
@command
def gc(settings: Settings, dry_run: bool) -> None:
    """Evict cache entries now until the cache is within cache.max_size and cache.min_free
    (safe while a server runs: entries being read are passed over)."""
    with opened_store(settings) as store:
        collector = CacheGC(store.registry, store.local, settings.cache)
        before, excess = collector.cached_bytes(), collector.excess()
        limits = (f"cache.max_size {size_text(settings.cache.max_size)}, cache.min_free "
                  f"{size_text(settings.cache.min_free)}")
        if not excess:
            click.echo(f"cache: {size_text(before)}; nothing to evict ({limits})")
            return
        if dry_run:
            plan = (f"would evict at least {size_text(excess)}" if excess <= before else
                    "would evict everything it holds, and the disk would still be under "
                    "cache.min_free")
            click.echo(f"cache: {size_text(before)}; {plan} ({limits})")
            return
        done = collector.collect()
        click.echo(f"cache: evicted {done.evicted:,} entries ({size_text(done.freed)}); now "
                   f"{size_text(collector.cached_bytes())} ({limits})")
        if not done.fits:
            click.echo("filestore: error: the cache is still over its limits: what is left "
                       "is being read", err=True)
            sys.exit(1)


@main.group()
def queue() -> None:
    """The queue of uploads and remote deletes."""


@queue.command("list")
@click.option("--failed", is_flag=True, help="Only the entries that failed for good.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries.")
@command
def queue_list(settings: Settings, failed: bool, as_json: bool) -> None:
    """List queued work in due order (streamed: fine with millions of entries)."""
    with opened_store(settings) as store:
        if as_json:
            click.echo("[")
        for n, entry in enumerate(entries.listing(store.registry.reader, failed)):
            if as_json:
                item = {"path": entry.path, "op": entry.op, "state": entry.state,
                        "attempts": entry.attempts, "due": entry.not_before,
                        "in_flight": entries.in_flight(entry, time.time()),
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
    with opened_store(settings) as store, store.registry.transaction() as conn:
        count = entries.retry(conn, None if every else paths.normalize(path or ""),
                              time.time())
    click.echo(f"queue: {count} failed entr{'y' if count == 1 else 'ies'} due again")
    if path is not None and count == 0:
        sys.exit(1)


@queue.command("drop")
@click.argument("path")
@command
def queue_drop(settings: Settings, path: str) -> None:
    """Forget a path's queued work. A dropped upload leaves the file local until it is
    written again or moved to the cloud; a dropped remote delete leaves the remote copy."""
    with opened_store(settings) as store, store.registry.transaction() as conn:
        dropped = entries.drop(conn, paths.normalize(path))
    click.echo(f"queue: {'dropped' if dropped else 'nothing queued for'} {path}")
    if not dropped:
        sys.exit(1)


@main.command()
@click.argument("target", type=click.Path(dir_okay=False))
@command
def backup(settings: Settings, target: str) -> None:
    """Write a consistent copy of the registry to TARGET (safe while a server runs)."""
    with opened_store(settings) as store:
        store.registry.backup(Path(target).absolute())
    click.echo(f"filestore: registry copied to {target}")


@main.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--prefix", default="", help="Store DIRECTORY/x/y as PREFIX/x/y.")
@command
def import_tree(settings: Settings, directory: str, prefix: str) -> None:
    """Copy an existing directory tree into the store (registered, hashed, queued for upload).
    Resumable: files already imported are skipped. The source is only read."""
    root = Path(directory).resolve()
    if root == settings.data_dir.resolve() or settings.data_dir.resolve() in root.parents:
        raise ConfigError(f"{directory} is inside the data directory")
    prefix = paths.normalize_prefix(prefix).rstrip("/")
    report = ImportReport()
    with opened_store(settings) as store:
        found = list(candidates(root, report))
        with click.progressbar(length=sum(c.size for c in found), label="importing",
                               file=sys.stderr, show_eta=True) as bar:
            for candidate in found:
                import_one(store, candidate, f"{prefix}/" if prefix else "", report)
                bar.update(candidate.size)
    click.echo(f"import: {report.imported:,} files ({size_text(report.bytes)}) imported, "
               f"{report.already:,} already there, {len(report.problems):,} skipped")
    for problem in report.problems:
        click.echo(f"  skipped {problem}", err=True)
    if report.problems:
        sys.exit(1)
