"""`filestore s3 keys`: the administrator's key pair for the S3 endpoint (`s3.port`).

The pair is made the first time it is asked for and printed; `--rotate` makes a new one and the
old one is refused from the next request on, in every worker. (Accounts' pairs are made through
`POST /admin/api/accounts/ID/s3-keys`.) The secret is kept encrypted with the data directory's
`secrets.key`; this command is how an operator hands it to a client.
"""

from __future__ import annotations

import json

import click

from ..config import Settings
from ..service import Service
from .base import command, main


@main.group("s3")
def s3_group() -> None:
    """The S3-compatible endpoint's credentials."""


@s3_group.command("keys")
@click.option("--rotate", is_flag=True, help="Make a new pair; the old one stops working.")
@click.option("--json", "as_json", is_flag=True, help="Print the pair as JSON.")
@command
def s3_keys(settings: Settings, rotate: bool, as_json: bool) -> None:
    """Print the administrator's S3 key pair (made on first use)."""
    with Service.opened(settings) as service:
        pair, new = service.s3_keys.admin_pair(rotate=rotate)
    if as_json:
        click.echo(json.dumps({**pair.public(), "new": new}, indent=2))
        return
    click.echo(f"access_key_id = {pair.access_key_id}")
    click.echo(f"secret_access_key = {pair.secret_access_key}")
    if settings.s3.port:
        click.echo(f"endpoint_url = http://{settings.server.host}:{settings.s3.port}  "
                   f"(region {settings.s3.region}, path-style addressing)", err=True)
    else:
        click.echo("the S3 endpoint is off: set s3.port to serve it", err=True)
