"""Maintenance: `gc`, `backup`, `restore`, `import` and `verify`."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import anyio
import click

from .. import paths
from ..config import Settings
from ..errors import ConfigError
from ..importer import ImportReport, Replicate, candidates, prune_empty
from ..restore import restore_registry
from ..service import Service
from ..stats import size_text
from ..verify import remote_view
from .base import command, main


@main.command()
@click.option("--dry-run", is_flag=True, help="Only say how much would be evicted.")
@command
def gc(settings: Settings, dry_run: bool) -> None:
    """Evict cache entries now until the cache is within cache.max_size and cache.min_free
    (safe while a server runs: entries being read are passed over)."""
    with Service.opened(settings) as service:
        collector = service.cache_collector()
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



@main.command()
@click.argument("target", type=click.Path(dir_okay=False))
@command
def backup(settings: Settings, target: str) -> None:
    """Write a consistent copy of the registry to TARGET (safe while a server runs)."""
    with Service.opened(settings, read_only=True) as service:
        service.backup(Path(target).absolute())
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
    with Service.opened(settings) as service:
        found = list(candidates(root, report))

        def import_all(replicate: Replicate | None = None) -> None:
            with click.progressbar(length=sum(c.size for c in found), label="importing",
                                   file=sys.stderr, show_eta=True) as bar:
                for candidate in found:
                    service.import_file(candidate, f"{prefix}/" if prefix else "", report,
                                        move, replicate)
                    bar.update(candidate.size)

        async def replicated() -> None:
            async with service.replicator() as replicate:
                await anyio.to_thread.run_sync(import_all, replicate)

        if service.store.replicating:  # each file recorded once another node holds a copy
            anyio.run(replicated)
        else:
            import_all()
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
    kept, warning = restore_registry(settings, Path(source))
    click.echo(f"restore: {source} is the registry of {settings.data_dir} now"
               + (f" (the previous one is kept as {kept.name})" if kept else ""))
    if warning:
        click.echo(f"restore: {warning}", err=True)
    _verify(settings, check_remote, False, False)


def _verify(settings: Settings, check_remote: bool, repair: bool, as_json: bool) -> None:
    with Service.opened(settings) as service, contextlib.ExitStack() as stack:
        view = stack.enter_context(remote_view(service.settings)) if check_remote else None
        if as_json:
            result = service.verify(repair=repair, remote=view)
        else:
            with click.progressbar(length=service.counters().get("files", 0),
                                   label="verifying", file=sys.stderr) as bar:
                result = service.verify(repair=repair, remote=view, progress=bar.update)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        for finding in result.findings:
            click.echo(finding.text())
        click.echo(result.summary())
    if not result.clean:
        sys.exit(1)

