"""`filestore accounts add|list|show|suspend|resume|remove` and `accounts token
add|list|revoke`: the accounts (each owns the paths under `ID/`) and their tokens.

A new token is printed alone on stdout (`TOKEN=$(filestore accounts add ...)`), or inside the
`--json` answer: this is the one time it is shown. A running server sees every change at its next
request. Exit 1 for an unknown account or token and for a conflict, 2 for a bad argument.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import click

from ..accounts import ADMIN, Accounts, parse_id, parse_name, parse_token_name
from ..config import Settings
from ..errors import BadRequest
from ..registry import Account
from ..service import Service
from ..stats import size_text
from ..values import parse_size
from .base import command, main
from .moves import follow

_PAGE = 1000
json_option = click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")


def _checked(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: `parse`'s refusal is a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except BadRequest as exc:
            raise click.BadParameter(exc.detail) from None
        except ValueError as exc:
            raise click.BadParameter(f"expected {exc}") from None

    return callback


account_argument = click.argument("account_id", metavar="ID", callback=_checked(parse_id))
token_argument = click.argument("token_name", metavar="NAME",
                                callback=_checked(parse_token_name))


def _when(moment: float | None) -> str:
    return "never" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                       time.localtime(moment))


def _quota(quota: int) -> str:
    return size_text(quota) if quota else "none"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _every(accounts: Accounts) -> Iterator[Account]:
    after = ""
    while page := accounts.page(after, _PAGE):
        yield from page
        after = page[-1].id


@main.group()
def accounts() -> None:
    """Accounts: each owns the paths under ID/, with tokens of its own and a quota."""


@accounts.command("add")
@account_argument
@click.option("--name", required=True, callback=_checked(parse_name),
              help="What the account is called (shown on the admin page).")
@click.option("--quota", default="0", callback=_checked(parse_size),
              help='The bytes it may hold, a size like "10GiB" (default 0: no limit).')
@json_option
@command
def accounts_add(settings: Settings, account_id: str, name: str, quota: int,
                 as_json: bool) -> None:
    """Add an account owning the paths under ID/ and print its first token ("default"): the
    one time it is shown."""
    with Service.opened(settings) as service:
        created, token = service.accounts.create(account_id, name, quota)
        answer = {**service.accounts.describe(created), "token": token}
    if as_json:
        _echo_json(answer)
    else:
        click.echo(token)


@accounts.command("list")
@json_option
@command
def accounts_list(settings: Settings, as_json: bool) -> None:
    """Every account, in id order, with what it holds."""
    with Service.opened(settings, read_only=True) as service:
        found = [service.accounts.describe(account) for account in _every(service.accounts)]
    if as_json:
        _echo_json(found)
        return
    for item in found:
        usage = item["usage"]
        click.echo(f"{item['id']:20} {item['state']:9} {usage['files']:>9,} files "
                   f"{size_text(usage['bytes']):>12}  quota {_quota(item['quota']):>10}  "
                   f"{item['name']}")


@accounts.command("show")
@account_argument
@json_option
@command
def accounts_show(settings: Settings, account_id: str, as_json: bool) -> None:
    """One account: its settings, its usage (from counters), its tokens by name and its own
    storage (remotes, never a secret, and rules)."""
    with Service.opened(settings, read_only=True) as service:
        described = service.accounts.describe(service.accounts.get(account_id))
        tokens = [t.public() for t in service.accounts.tokens(account_id)]
        storage = service.account_storage(ADMIN, account_id)
    if as_json:
        _echo_json({**described, "tokens": tokens, "storage": storage})
        return
    usage = described["usage"]
    click.echo(f"account {described['id']}: {described['name']} ({described['state']})")
    click.echo(f"  paths    {described['id']}/...")
    click.echo(f"  created  {_when(described['created'])}")
    click.echo(f"  quota    {_quota(described['quota'])}")
    click.echo(f"  holds    {usage['files']:,} files, {size_text(usage['bytes'])} "
               f"({size_text(usage['local_bytes'])} local only, "
               f"{size_text(usage['remote_bytes'])} in the cloud)")
    for remote, held in sorted(usage["remotes"].items()):
        click.echo(f"  remote   {remote}: {size_text(held)}")
    click.echo(f"  uploads  {usage['uploads']:,}")
    for item in tokens:
        click.echo(f"  token    {item['name']}: created {_when(item['created'])}, last used "
                   f"{_when(item['last_used'])}")
    for name, remote in storage["remotes"].items():
        click.echo(f"  storage  {name}: {remote['display_url']}, {remote['files']:,} files, "
                   f"{size_text(remote['bytes'])}")
    for number, rule in enumerate(storage["plan"], 1):
        click.echo(f"  rule {number}   " + ", ".join(f"{key} = {json.dumps(value)}"
                                                   for key, value in rule.items()))


def _set_state(settings: Settings, account_id: str, state: str, as_json: bool) -> None:
    with Service.opened(settings) as service:
        changed = service.accounts.update(account_id, state=state)
        described = service.accounts.describe(changed)
    if as_json:
        _echo_json(described)
    else:
        click.echo(f"accounts: {account_id} {state}")


@accounts.command("suspend")
@account_argument
@json_option
@command
def accounts_suspend(settings: Settings, account_id: str, as_json: bool) -> None:
    """Refuse the account's tokens (403) from the next request on, in every server process;
    its files stay."""
    _set_state(settings, account_id, "suspended", as_json)


@accounts.command("resume")
@account_argument
@json_option
@command
def accounts_resume(settings: Settings, account_id: str, as_json: bool) -> None:
    """Let a suspended account's tokens work again."""
    _set_state(settings, account_id, "active", as_json)


@accounts.command("remove")
@account_argument
@click.option("--purge", is_flag=True, help="Delete its files too, cloud copies included (a "
              "job: the account is suspended at once and removed once they are gone).")
@click.option("--wait", is_flag=True, help="With --purge: show progress until the job ends.")
@json_option
@command
def accounts_remove(settings: Settings, account_id: str, purge: bool, wait: bool,
                    as_json: bool) -> None:
    """Remove an account and its tokens; refused (exit 1) while it holds files, unless
    --purge."""
    if wait and not purge:
        raise click.UsageError("--wait goes with --purge")
    with Service.opened(settings) as service:
        if purge:
            job = anyio.run(service.purge_account, account_id)
            if as_json:
                _echo_json(job.public())
                return
            follow(service, job, wait)
            return
        service.accounts.remove(account_id)
    if as_json:
        _echo_json({"removed": account_id})
    else:
        click.echo(f"accounts: removed {account_id}")


@accounts.group("token")
def token_group() -> None:
    """An account's tokens: several at once, each named, shown once when made."""


@token_group.command("add")
@account_argument
@token_argument
@json_option
@command
def token_add(settings: Settings, account_id: str, token_name: str, as_json: bool) -> None:
    """Make a token named NAME for the account and print it: the one time it is shown."""
    with Service.opened(settings) as service:
        token = service.accounts.add_token(account_id, token_name)
    if as_json:
        _echo_json({"name": token_name, "token": token})
    else:
        click.echo(token)


@token_group.command("list")
@account_argument
@json_option
@command
def token_list(settings: Settings, account_id: str, as_json: bool) -> None:
    """The account's tokens by name, when each was made and last used (never the tokens)."""
    with Service.opened(settings, read_only=True) as service:
        found = [t.public() for t in service.accounts.tokens(account_id)]
    if as_json:
        _echo_json(found)
        return
    for item in found:
        click.echo(f"{item['name']:24} created {_when(item['created'])}  last used "
                   f"{_when(item['last_used'])}")


@token_group.command("revoke")
@account_argument
@token_argument
@json_option
@command
def token_revoke(settings: Settings, account_id: str, token_name: str, as_json: bool) -> None:
    """Revoke a token: refused (401) from the next request on, in every server process."""
    with Service.opened(settings) as service:
        service.accounts.revoke(account_id, token_name)
    if as_json:
        _echo_json({"account": account_id, "revoked": token_name})
    else:
        click.echo(f"accounts: revoked the token {token_name} of {account_id}")
