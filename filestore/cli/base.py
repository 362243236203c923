"""What every `filestore` command shares: the group, `--config` and `--debug`, one-line errors.

Errors reach the user as one line on stderr (exit 2 for usage and configuration problems, 1 for
anything else); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .. import logs
from ..config import CONFIG_ENV, load_settings
from ..errors import ConfigError, FilestoreError

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar=CONFIG_ENV,
    help="TOML config file (default: $FILESTORE_CONFIG, else the embedded default).",
)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
# `serve` becomes the server: its log (crash recovery runs before uvicorn starts) is at
# `log.level`. Every other command prints what it did, and logs only warnings and errors beside.
SERVER_COMMANDS = frozenset({"serve"})


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command `--config` and `--debug`, load settings, and turn errors into one line."""

    @config_option
    @debug_option
    @functools.wraps(func)
    def wrapper(config_path: str | None, debug: bool, **kwargs: Any) -> Any:
        try:
            settings = load_settings(config_path)
            logs.configure(settings, logging.NOTSET if func.__name__ in SERVER_COMMANDS
                           else logging.WARNING)
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

