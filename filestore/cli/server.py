"""`filestore serve`, and the credentials clients use: `token` and `sign`."""

from __future__ import annotations

import logging
import sys
import time

import anyio
import click

from .. import logs, paths, plan, signing
from ..auth import write_new_token
from ..config import Settings
from ..errors import ConfigError
from ..remote import connected_remotes
from ..service import Service, files_url
from ..values import parse_duration
from .base import command, main

log = logging.getLogger("filestore")


@main.command()
@click.option("--host", default=None, help="Address to bind (default: server.host).")
@click.option("--port", type=int, default=None, help="Port to bind (default: server.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: server.workers).")
@command
def serve(settings: Settings, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP server (Ctrl-C stops it cleanly)."""
    from .. import serving  # uvicorn, and the admin page's own listener (admin.listen)

    # Creates the data directory and the token before the workers start.
    with Service.opened(settings) as service:
        store = service.store
        # Refused here with one line; its warnings are logged once by the first worker.
        plan.check_recorded(store.settings, store.registry.read)
    anyio.run(_check_remotes, store.settings)  # the remotes in effect (the admin page may have
    # changed them)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    workers = workers or settings.server.workers
    admin_url = serving.admin_url(settings.admin.listen, host, port)
    click.echo(f"filestore: serving http://{host}:{port}/files/ ({workers} worker(s))")
    click.echo(f"filestore: admin page {admin_url} (sign in with the API token)")
    click.echo(f"filestore: data directory {settings.data_dir}")
    # Where the token is, never the token itself: this output ends up in the journal.
    if settings.auth.token:
        click.echo("filestore: API token from auth.token in the config")
    elif store.token_created:
        click.echo(f"filestore: new API token written to {store.datadir.token_path} "
                   "(`filestore token` prints it)")
    else:
        click.echo(f"filestore: API token in {store.datadir.token_path} "
                   "(`filestore token` prints it)")
    if settings.s3.port:
        where = serving.listen_text(host, settings.s3.port)
        click.echo(f"filestore: S3 endpoint http://{where} (region {settings.s3.region}; "
                   "`filestore s3 keys` prints the administrator's key pair)")
    serving.run(settings.admin.listen, host, port, workers, settings.s3.port)


async def _check_remotes(settings: Settings) -> None:
    """Parse and open every remote before serving, so a bad `remote.url` (or an unwritable
    `file://` directory) is a one-line error and exit 2, not a traceback from a worker."""
    async with connected_remotes(settings):
        pass


@main.command()
@click.option("--rotate", is_flag=True,
              help="Replace the token with a new one; running servers take it up within a "
                   "second and every admin session signs out. Asks whether to replace the "
                   "signing key too (on a terminal).")
@click.option("--signing-key", is_flag=True,
              help="With --rotate: also replace the signing key, without asking (every signed "
                   "URL stops working).")
@command
def token(settings: Settings, rotate: bool, signing_key: bool) -> None:
    """Print the API token (generating it on first use)."""
    if signing_key and not rotate:
        raise click.UsageError("--signing-key goes with --rotate (or use `filestore sign "
                               "--rotate-key`)")
    with Service.opened(settings, read_only=True) as service:
        if not rotate:
            click.echo(service.store.token)
            return
        if settings.auth.token:
            raise ConfigError("the token comes from auth.token in the config: change it there")
        click.echo(write_new_token(service.store.datadir.token_path))
        logs.event(log, "admin_token.rotated", "the API token was rotated: running servers "
                   "take up the new one within a second", level=logging.WARNING,
                   file=str(service.store.datadir.token_path))
        # The prompt and the notes go to stderr: stdout is the token alone.
        asked = not signing_key and sys.stdin.isatty()
        if asked:
            signing_key = click.confirm(
                "filestore: replace the signing key too? Every signed URL stops working",
                default=False, err=True)
        if signing_key:
            service.signing.rotate()
            click.echo("filestore: new signing key; URLs signed before no longer work", err=True)
        elif not asked:
            click.echo("filestore: signed URLs still work; `filestore sign --rotate-key` "
                       "revokes them (`token --rotate --signing-key` does both)", err=True)


@main.command()
@click.argument("path", required=False)
@click.option("--method", type=click.Choice(signing.METHODS), default="GET", show_default=True,
              help="The method the URL grants (a GET URL also allows HEAD).")
@click.option("--expires", "lifetime", default="1h", show_default=True,
              help='How long the URL works: "15m", "1h", "7d" (at most signing.max_expiry).')
@click.option("--sha256", default=None, metavar="HEX",
              help="PUT only: the SHA-256 of the one body the URL takes (400 for another).")
@click.option("--type", "content_type", default=None, metavar="TYPE",
              help="PUT only: the Content-Type the upload must send (403 for another).")
@click.option("--once", is_flag=True,
              help="Single-use: refused after its first successful (2xx) request.")
@click.option("--base-url", default=None,
              help="Where clients reach the server (default: http://server.host:server.port).")
@click.option("--rotate-key", is_flag=True,
              help="Replace the signing key instead: every URL signed before stops working, in "
                   "running servers within a second. The API token is not changed.")
@command
def sign(settings: Settings, path: str | None, method: str, lifetime: str, sha256: str | None,
         content_type: str | None, once: bool, base_url: str | None, rotate_key: bool) -> None:
    """Print a URL that grants METHOD on PATH without the token, until it expires."""
    if rotate_key:
        if path is not None:
            raise click.UsageError("--rotate-key takes no PATH")
        with Service.opened(settings, read_only=True) as service:
            service.signing.rotate()
        click.echo("filestore: new signing key; URLs signed before no longer work", err=True)
        return
    if path is None:
        raise click.UsageError("give the PATH to sign (or --rotate-key)")
    if (sha256 is not None or content_type is not None) and method != "PUT":
        raise click.UsageError("--sha256 and --type bind the body of a PUT: add --method PUT")
    try:
        seconds = parse_duration(lifetime)
    except ValueError as exc:
        raise click.BadParameter(f"expected {exc}", param_hint="--expires") from None
    if seconds < 1:
        raise click.BadParameter("at least one second", param_hint="--expires")
    path = paths.normalize(path)
    base_url = base_url or files_url(settings)
    with Service.opened(settings, read_only=True) as service:
        refusal = signing.lifetime_refusal(seconds, service.settings.signing.max_expiry)
        if refusal:
            click.echo(f"filestore: error: --expires {lifetime} is {refusal}", err=True)
            sys.exit(2)
        try:
            url = service.signing.sign(method, path, int(time.time() + seconds), base_url,
                                       sha256=sha256, content_type=content_type, once=once)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(url)
