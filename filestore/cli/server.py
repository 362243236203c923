"""`filestore serve`, and the credentials clients use: `token` and `sign`."""

from __future__ import annotations

import time

import anyio
import click

from .. import paths, plan, signing
from ..auth import write_new_token
from ..config import Settings, parse_duration
from ..errors import ConfigError
from ..remote import connected_remotes
from ..service import Service
from .base import command, main


@main.command()
@click.option("--host", default=None, help="Address to bind (default: server.host).")
@click.option("--port", type=int, default=None, help="Port to bind (default: server.port).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: server.workers).")
@command
def serve(settings: Settings, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP server (Ctrl-C stops it cleanly)."""
    import uvicorn

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
    click.echo(f"filestore: serving http://{host}:{port}/files/ ({workers} worker(s))")
    click.echo(f"filestore: admin page http://{host}:{port}/admin (sign in with the API token)")
    click.echo(f"filestore: data directory {settings.data_dir}")
    if settings.auth.token:
        click.echo("filestore: API token from auth.token in the config")
    else:
        click.echo(f"filestore: API token in {store.datadir.token_path} (`filestore token`)")
        if store.token_created:
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
    with Service.opened(settings, read_only=True) as service:
        if not rotate:
            click.echo(service.store.token)
            return
        if settings.auth.token:
            raise ConfigError("the token comes from auth.token in the config: change it there")
        click.echo(write_new_token(service.store.datadir.token_path))


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
        with Service.opened(settings, read_only=True) as service:
            service.signing.rotate()
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
    with Service.opened(settings, read_only=True) as service:
        click.echo(service.signing.sign(method, path, int(time.time() + seconds), base_url))

