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

from . import overrides, paths, plan, signing
from .auth import write_new_token
from .cache.gc import CacheGC
from .config import CONFIG_ENV, Settings, load_settings, parse_duration, value_text
from .datadir import DataDir
from .errors import ConfigError, FilestoreError
from .importer import ImportReport, candidates, import_one, prune_empty
from .queue import moves
from .queue.moves import MoveRunner
from .queue.worker import QueueWorkers
from .registry import SETTINGS_SCHEMA, Job, SqliteRegistry, in_flight
from .remote import connected_remotes, open_remotes
from .restore import restore_registry
from .stats import figures, report, size_text
from .store import Store, guess_content_type
from .verify import Verifier, remote_view

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
    try:
        token_created = store.token_created
        # Refused here with one line; its warnings are logged once by the first worker.
        plan.check_recorded(store.settings, store.registry.read)
    finally:
        store.close()
    anyio.run(_check_remotes, store.settings)  # the remotes in effect (the admin page may have
    # changed them)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    click.echo(f"filestore: serving http://{host}:{port}/files/ ({workers} worker(s))")
    click.echo(f"filestore: admin page http://{host}:{port}/admin (sign in with the API token)")
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
        http="filestore.httpguard:GuardedHttpToolsProtocol",  # httptools with limits
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


async def _check_remotes(settings: Settings) -> None:
    """Parse and open every remote before serving, so a bad `remote.url` (or an unwritable
    `file://` directory) is a one-line error and exit 2, not a traceback from a worker."""
    async with connected_remotes(settings):
        pass


@main.command()
@click.option("--rotate", is_flag=True,
              help="Replace the token with a new one; running servers take it up within a "
                   "second and every admin session signs out.")
@command
def token(settings: Settings, rotate: bool) -> None:
    """Print the API token (generating it on first use)."""
    with opened_store(settings) as store:
        if not rotate:
            click.echo(store.token)
            return
        if settings.auth.token:
            raise ConfigError("the token comes from auth.token in the config: change it there")
        click.echo(write_new_token(store.datadir.token_path))


@main.command()
@click.argument("path", required=False)
@click.option("--method", type=click.Choice(signing.METHODS), default="GET", show_default=True,
              help="The one request the URL grants (a GET URL also allows HEAD).")
@click.option("--expires", "lifetime", default="1h", show_default=True,
              help='How long the URL works: "15m", "1h", "7d".')
@click.option("--base-url", default=None,
              help="Where clients reach the server (default: http://server.host:server.port).")
@click.option("--rotate-key", is_flag=True,
              help="Replace the signing key instead: every URL signed before stops working, in "
                   "running servers within a second. The API token is not changed.")
@command
def sign(settings: Settings, path: str | None, method: str, lifetime: str,
         base_url: str | None, rotate_key: bool) -> None:
    """Print a URL that grants one request on PATH without the token, until it expires."""
    if rotate_key:
        if path is not None:
            raise click.UsageError("--rotate-key takes no PATH")
        with opened_store(settings) as store:
            signing.rotate_key(store.datadir.root)
        click.echo("filestore: new signing key; URLs signed before no longer work", err=True)
        return
    if path is None:
        raise click.UsageError("give the PATH to sign (or --rotate-key)")
    try:
        seconds = parse_duration(lifetime)
    except ValueError as exc:
        raise click.BadParameter(f"expected {exc}", param_hint="--expires") from None
    if seconds < 1:
        raise click.BadParameter("at least one second", param_hint="--expires")
    path = paths.normalize(path)
    if base_url is None:
        host = settings.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        base_url = f"http://{host}:{settings.server.port}"
    with opened_store(settings) as store:
        key = signing.SigningKey(store.datadir.root)
        click.echo(key.sign(method, path, int(time.time() + seconds), base_url))


@main.group("plan")
def plan_group() -> None:
    """The storage plan: which remote each file goes to ([remotes.NAME], [[plan]])."""


@plan_group.command("check")
@click.argument("path")
@click.option("--type", "content_type", default=None,
              help="The file's content type (default: guessed from PATH, as a PUT would).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@command
def plan_check(settings: Settings, path: str, content_type: str | None, as_json: bool) -> None:
    """Which rule and remote a file at PATH would get, and where it is now."""
    path = paths.normalize(path)
    content_type = content_type or guess_content_type(path)
    with opened_store(settings) as store:
        remotes = open_remotes(store.settings)  # validated, not connected
        route = store.route(path, content_type)
        record = store.registry.read.files.get(path)
    rule = store.settings.plan[route.rule - 1] if route.rule is not None else None
    answer = {"path": path, "content_type": content_type, **route.public(),
              "rule_text": plan.describe(rule) if rule is not None else None,
              "remote_url": remotes[route.remote].display_url,
              "now": None if record is None else {"location": record.location,
                                                  "remote": record.remote}}
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    said = f"rule {route.rule}: {answer['rule_text']}" if rule is not None \
        else "no rule matches: the [upload] section and the default remote"
    click.echo(f"{path} ({content_type}): {said}")
    if not route.upload:
        click.echo("  stays local: never uploaded")
    else:
        click.echo(f"  remote {route.remote}: {answer['remote_url']}")
        click.echo(f"  uploaded {_after(route.delay)}; local copy "
                   + ("kept (keep_local)" if route.keep_local else "moved to the cache"))
    if record is not None:
        where = f"in the cloud at {record.remote}" if record.location == "remote" \
            else "local"
        click.echo(f"  now: {where}")


def _after(seconds: float) -> str:
    return "at once" if seconds == 0 else f"after {value_text(seconds, parse_duration)}"


@plan_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@command
def plan_show(settings: Settings, as_json: bool) -> None:
    """The remotes (with the files and bytes each holds) and the rules, in order."""
    with opened_store(settings) as store:
        described = plan.overview(store.settings, store.registry.read)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for name, remote in described["remotes"].items():
        click.echo(f"remote {name}: {remote['url']} ({remote['files']:,} files, "
                   f"{size_text(remote['bytes'])} in the cloud there)")
    for rule in described["rules"]:
        click.echo(f"rule {rule['number']}: {rule['text']}")
    if not described["rules"]:
        click.echo("no rules: every file goes to the default remote")


@main.group("settings")
def settings_group() -> None:
    """The settings saved from the admin page (they override the config file)."""


@settings_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
@command
def settings_show(settings: Settings, as_json: bool) -> None:
    """The settings the admin page can change, and which of them it saved."""
    with opened_store(settings) as store:
        described = overrides.describe(store.settings, overrides.saved(store.registry.read))
    if as_json:
        click.echo(json.dumps(overrides.nest(described), indent=2))
        return
    for section, keys in described.items():
        for key, entry in keys.items():
            value = entry.get("value", "(set)" if entry.get("set") else "(not set)")
            where = "saved from the admin page" if entry["saved"] else "config"
            click.echo(f"{section}.{key} = {value}  [{where}]")


@settings_group.command("reset")
@click.option("--force", is_flag=True,
              help="Reset even if it points the remote elsewhere while files are in the cloud.")
@command
def settings_reset(settings: Settings, force: bool) -> None:
    """Forget what the admin page saved: the config file rules again (servers apply it within
    a second). Works even when a saved value stops the store from opening."""
    path = DataDir(settings.data_dir).registry_path
    if not path.exists():
        raise ConfigError(f"no registry at {path}: nothing was saved")
    registry = SqliteRegistry(path)
    try:
        if registry.schema_version() < SETTINGS_SCHEMA:  # a registry from before the admin page
            raise ConfigError("nothing was saved from the admin page")
        with registry.transaction() as tx:
            try:
                current = overrides.effective(settings, tx)
            except ConfigError:
                if not force:
                    raise
                current = settings  # a saved value no parser takes: forget it regardless
            for name in overrides.moved_remotes(current, settings):
                if not force:
                    where = current.named_remotes()[name].url or "the default remote"
                    overrides.refuse_stranding(tx, name, where)
                tx.files.forget_copies_in(name)
            count = tx.settings.reset()
    finally:
        registry.close()
    click.echo(f"settings: forgot {count} saved value{'' if count == 1 else 's'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@command
def stats(settings: Settings, as_json: bool) -> None:
    """Where the files are, the cache, the queue and the move job: the admin page's figures
    (safe while a server runs)."""
    with opened_store(settings) as store:
        found = figures(store.registry, store.settings)
    click.echo(json.dumps(found, indent=2) if as_json else report(found))


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
    with opened_store(settings) as store:
        job = moves.start(store, kind, delete_remote)
        served = not store.alone
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
                    while progress.show(store.registry.read.jobs.get(job.id)):
                        time.sleep(0.5)
            else:
                anyio.run(_run_job_here, store, job.id)
        except KeyboardInterrupt:
            if served:
                click.echo(f"\n{kind}: stopped watching; job {job.id} goes on in the server")
            else:
                moves.cancel(store, job.id)
                click.echo(f"\n{kind}: job {job.id} cancelled (no server runs to carry it on)")
            sys.exit(130)
        final = store.registry.read.jobs.get(job.id)
    click.echo(f"{kind}: job {final.id} {final.state}: {final.done:,} files "
               f"({size_text(final.bytes)}), {final.errors:,} errors"
               + (f"; last error: {final.last_error}" if final.last_error else ""))
    if final.state != "done" or final.errors:
        sys.exit(1)


async def _run_job_here(store: Store, job_id: int) -> None:
    """Run a move job in this process, with the queue's workers (no server is running)."""
    async with connected_remotes(store.settings) as remotes:
        workers = QueueWorkers(store, remotes)
        store.on_change = workers.wake
        runner = MoveRunner(store, remotes, workers.owner, workers.wake)
        try:
            job = await anyio.to_thread.run_sync(runner.lease)
            if job is None or job.id != job_id:
                raise FilestoreError(f"job {job_id} is being run by another process")
            async with anyio.create_task_group() as tg:
                tg.start_soon(workers.run)
                tg.start_soon(_show_progress, store, job)
                await runner.run_job(job)
                # The remote deletes a move to local queued (and anything else due) run before
                # this process goes; what waits for a retry is left to the next server.
                while workers.in_flight or _work_due(store):
                    await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
        finally:
            runner.close()
        CacheGC(store.registry, store.local, store.settings.cache).collect()


def _work_due(store: Store) -> bool:
    if not store.settings.upload.enabled:
        return False  # nothing would take it
    due = store.registry.read.queue.next_due(time.time())
    return due is not None and due <= time.time()


async def _show_progress(store: Store, job: Job) -> None:
    with JobProgress(job) as progress:
        while progress.show(store.registry.read.jobs.get(job.id)):
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
        for n, entry in enumerate(store.registry.read.queue.listing(failed)):
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
    with opened_store(settings) as store, store.registry.transaction() as tx:
        count = tx.queue.retry(None if every else paths.normalize(path or ""),
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
    with opened_store(settings) as store, store.registry.transaction() as tx:
        dropped = tx.queue.drop(paths.normalize(path))
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
@click.option("--move", is_flag=True,
              help="Delete each source file once the store holds its bytes.")
@command
def import_tree(settings: Settings, directory: str, prefix: str, move: bool) -> None:
    """Copy an existing directory tree into the store (registered, hashed, queued for upload).
    Resumable: files already imported are skipped. The source is only read, unless --move."""
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
                import_one(store, candidate, f"{prefix}/" if prefix else "", report, move)
                bar.update(candidate.size)
        if move:
            prune_empty(root)
    click.echo(f"import: {report.imported:,} files ({size_text(report.bytes)}) imported, "
               f"{report.already:,} already there, {len(report.problems):,} skipped"
               + (f"; {report.moved:,} source files deleted" if move else ""))
    for problem in report.problems:
        click.echo(f"  skipped {problem}", err=True)
    if report.problems:
        sys.exit(1)


@main.command()
@click.option("--remote", "check_remote", is_flag=True,
              help="Also compare the remote's objects with the registry (sizes, and SHA-256 "
                   "where the store reports one).")
@click.option("--repair", is_flag=True,
              help="Fix what can be fixed safely, and say what was done.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: findings and repairs.")
@command
def verify(settings: Settings, check_remote: bool, repair: bool, as_json: bool) -> None:
    """Hash every file and compare it, the cache and (--remote) the cloud with the registry.
    Exit 1 if anything was wrong, even if repaired. Safe while a server runs."""
    _verify(settings, check_remote, repair, as_json)


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--remote", "check_remote", is_flag=True,
              help="Verify against the remote's objects too.")
@command
def restore(settings: Settings, source: str, check_remote: bool) -> None:
    """Install SOURCE (a `filestore backup`) as the registry of a data directory no server is
    using (the old registry is kept beside it), then verify. Exit 1 while a server runs, 2 if
    SOURCE is not a registry this filestore knows."""
    kept = restore_registry(settings, Path(source))
    click.echo(f"restore: {source} is the registry of {settings.data_dir} now"
               + (f" (the previous one is kept as {kept.name})" if kept else ""))
    _verify(settings, check_remote, False, False)


def _verify(settings: Settings, check_remote: bool, repair: bool, as_json: bool) -> None:
    with opened_store(settings) as store, contextlib.ExitStack() as stack:
        view = stack.enter_context(remote_view(store.settings)) if check_remote else None
        if as_json:
            result = Verifier(store, repair=repair, remote=view).run()
        else:
            with click.progressbar(length=store.registry.read.counters.all().get("files", 0),
                                   label="verifying", file=sys.stderr) as bar:
                result = Verifier(store, repair=repair, remote=view, progress=bar.update).run()
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        for finding in result.findings:
            click.echo(finding.text())
        click.echo(result.summary())
    if not result.clean:
        sys.exit(1)
