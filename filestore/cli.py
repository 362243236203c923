"""The `filestore` command: serve, and maintenance from a shell.

Errors reach the user as one line on stderr (exit 2 for usage and configuration problems, 1 for
anything else); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import anyio
import click

from .config import CONFIG_ENV, Settings, load_settings
from .errors import ConfigError, FilestoreError, RemoteError
from .remote import open_remote
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
