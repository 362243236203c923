"""`filestore cache warm|pin|unpin|pins`: filling the cache ahead of reads, and the prefixes it
keeps (never evicted).

`warm` runs here, whether or not a server runs on the data directory: the cache area and its index
are shared by every process there, and the fill lock keeps a server's GET and this command from
downloading one file twice (`cache/warm.py`). Exit 1 when a file failed or did not fit, or a pin
was refused; 2 for a bad argument; 130 after Ctrl-C (what was warmed stays: run it again).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import click

from .. import paths
from ..cache.pins import pin_prefix
from ..cache.warm import WarmReport
from ..config import Settings
from ..errors import BadRequest
from ..service import Service
from ..stats import size_text
from .base import command, main

json_option = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
concurrency_option = click.option(
    "--concurrency", type=click.IntRange(1, 64), default=None,
    help="Downloads at a time (default: upload.concurrency).")


def _prefix(parse: Any) -> Any:
    """A click callback: a prefix `parse` refuses is a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            return str(parse(value))
        except BadRequest as exc:
            raise click.BadParameter(exc.detail) from None

    return callback


@main.group("cache")
def cache_group() -> None:
    """The cache: warm it ahead of reads, pin prefixes it never evicts."""


@cache_group.command("warm")
@click.argument("prefix", callback=_prefix(paths.normalize_prefix))
@concurrency_option
@json_option
@command
def warm(settings: Settings, prefix: str, concurrency: int | None, as_json: bool) -> None:
    """Download every file under PREFIX that only the cloud has into the cache, within
    cache.max_size (pinned entries are never evicted for it). Resumable: a rerun takes only
    what is not cached yet."""
    with Service.opened(settings) as service:
        report = _warm(service, prefix, concurrency, as_json)
    _say(report.public() if as_json else _text(report), as_json)
    if not report.clean:
        sys.exit(1)


@cache_group.command("pin")
@click.argument("prefix", callback=_prefix(pin_prefix))
@click.option("--no-warm", is_flag=True, help="Only pin: leave the downloads to later reads.")
@concurrency_option
@json_option
@command
def pin(settings: Settings, prefix: str, no_warm: bool, concurrency: int | None,
        as_json: bool) -> None:
    """Keep the files under PREFIX in the cache, never evicted, and warm them (unless
    --no-warm). Refused (exit 1) when they and the pinned ones would not fit in
    cache.max_size."""
    with Service.opened(settings) as service:
        pinned = anyio.run(service.pin_cache, prefix)
        if not as_json:
            click.echo(f"pinned {prefix!r}" + ("" if pinned.new else " (already)")
                       + f": {pinned.files:,} files ({size_text(pinned.bytes)}); "
                       f"{pinned.marked:,} cached entries pinned now")
        report = None if no_warm else _warm(service, prefix, concurrency, as_json)
    if as_json:
        _say({"pin": pinned.public(), "warm": report and report.public()}, True)
    elif report is not None:
        click.echo(_text(report))
    if report is not None and not report.clean:
        sys.exit(1)


@cache_group.command("unpin")
@click.argument("prefix", callback=_prefix(paths.normalize_prefix))
@json_option
@command
def unpin(settings: Settings, prefix: str, as_json: bool) -> None:
    """Unpin PREFIX: its entries become ordinary ones, evicted as the cache needs (those
    under another pin stay pinned). Exit 1 if it was not pinned."""
    with Service.opened(settings) as service:
        released = anyio.run(service.unpin_cache, prefix)
    _say({"prefix": prefix, "released": released} if as_json else
         f"unpinned {prefix!r}: {released:,} cached entries are evictable again", as_json)


@cache_group.command("pins")
@json_option
@command
def pins(settings: Settings, as_json: bool) -> None:
    """The pinned prefixes: the files and bytes under each, and how much of it is cached."""
    with Service.opened(settings, read_only=True) as service:
        items = service.cache_pins()
        figures = service.stats()["cache"]
    if as_json:
        _say(items, True)
        return
    for item in items:
        click.echo(f"{item['prefix']}  {item['files']:,} files ({size_text(item['bytes'])}), "
                   f"cached {item['cached_files']:,} ({size_text(item['cached_bytes'])})")
    click.echo(f"pinned: {figures['pinned_entries']:,} entries "
               f"({size_text(figures['pinned_bytes'])}) of cache.max_size "
               f"{size_text(figures['max_size'])}")


def _text(report: WarmReport) -> str:
    """The report's line; the files that failed (the first few) go to stderr."""
    for error in report.errors:
        click.echo(f"  failed {error}", err=True)
    if report.failed > len(report.errors):
        click.echo(f"  ... and {report.failed - len(report.errors):,} more", err=True)
    return report.text()


def _say(answer: Any, as_json: bool) -> None:
    click.echo(json.dumps(answer, indent=2) if as_json else answer)


def _warm(service: Service, prefix: str, concurrency: int | None, quiet: bool) -> WarmReport:
    """Warm with a progress bar on stderr (none with `quiet`); Ctrl-C stops, saying what was
    done (exit 130)."""
    bar = _Bar(f"warming {prefix!r}")
    try:
        return anyio.run(service.warm_cache, prefix,
                         concurrency or service.settings.upload.concurrency,
                         (lambda report: None) if quiet else bar.show)
    except KeyboardInterrupt:
        bar.close()
        done = bar.report
        click.echo(f"\nwarm {prefix!r}: interrupted"
                   + (f" after {done.warmed:,} files ({size_text(done.warmed_bytes)})"
                      if done else "") + "; run it again to warm the rest", err=True)
        sys.exit(130)
    finally:
        bar.close()


class _Bar:
    """A progress bar of a warm: bytes, files, time left (drawn from the first file on)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.report: WarmReport | None = None
        self._bar: Any = None

    def show(self, report: WarmReport) -> None:
        self.report = report
        if self._bar is None:
            self._bar = click.progressbar(
                length=max(report.bytes, 1), label=self.label, file=sys.stderr, show_eta=True,
                show_percent=True, item_show_func=lambda r: r and f"{r.handled:,}/{r.files:,} "
                "files")
            self._bar.__enter__()
        self._bar.update(report.handled_bytes - self._bar.pos, report)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
