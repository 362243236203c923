"""Commands that show what the registry knows: `stats`, `plan check|show`, `settings show`
(read-only: they open the registry without a writer), and `settings reset`."""

from __future__ import annotations

import json

import click

from .. import overrides, paths, plan
from ..config import Settings
from ..live_settings import reset_settings
from ..remote import open_remotes
from ..service import Service
from ..stats import report, size_text
from ..store import guess_content_type
from ..values import parse_duration, value_text
from .base import command, main


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
    with Service.opened(settings, read_only=True) as service:
        remotes = open_remotes(service.settings)  # validated, not connected
        route = service.route(path, content_type)
        record = service.store.registry.read.files.get(path)
    rule = service.settings.plan[route.rule - 1] if route.rule is not None else None
    if route.account_rule is not None:
        rule = service.settings.account_plan[path.partition("/")[0]][route.account_rule - 1]
    answer = {"path": path, "content_type": content_type, **route.public(),
              "rule_text": plan.describe(rule) if rule is not None else None,
              "remote_url": remotes[route.remote].display_url,
              "now": None if record is None else {"location": record.location,
                                                  "remote": record.remote}}
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    said = f"{route.decided_by}: {answer['rule_text']}" if rule is not None \
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
    with Service.opened(settings, read_only=True) as service:
        described = service.plan_overview()
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
    with Service.opened(settings, read_only=True) as service:
        described = service.settings_view()
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
    count = reset_settings(settings, force=force)
    click.echo(f"settings: forgot {count} saved value{'' if count == 1 else 's'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@command
def stats(settings: Settings, as_json: bool) -> None:
    """Where the files are, the cache, the queue and the move job: the admin page's figures
    (safe while a server runs)."""
    with Service.opened(settings, read_only=True) as service:
        found = service.stats()
    click.echo(json.dumps(found, indent=2) if as_json else report(found))

