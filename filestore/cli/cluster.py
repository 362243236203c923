"""`filestore cluster status [--json]`: every node sharing the registry, and `cluster forget
NAME`: take a node that is gone for good off the list (a live one beats itself back on)."""

from __future__ import annotations

import json
import sys

import click

from ..cluster import status
from ..config import Settings
from ..errors import Conflict, NotFound
from ..service import Service
from .base import command, main


@main.group("cluster")
def cluster_group() -> None:
    """The nodes sharing this registry."""


@cluster_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@command
def cluster_status(settings: Settings, as_json: bool) -> None:
    """Each node: URL, last heartbeat, alive, local-only files, uploads in flight, cache.
    Exits 1 when a node is dead."""
    with Service.opened(settings, read_only=True) as service:
        shown = status.overview(service.store.registry.read, service.settings)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(f"{'node':<20} {'alive':<6} {'heartbeat':>10} {'local files':>12} "
                   f"{'local bytes':>14} {'uploading':>9} {'cache bytes':>14}  url")
        for node in shown["nodes"]:
            mark = "*" if node["this"] else " "
            click.echo(f"{node['name'] + mark:<20} {'yes' if node['alive'] else 'DEAD':<6} "
                       f"{node['seconds_since_heartbeat']:>8.1f} s {node['local_files']:>12,} "
                       f"{node['local_bytes']:>14,} {node['uploads_in_flight']:>9,} "
                       f"{node['cache_bytes']:>14,}  {node['url']}")
    if shown["alive"] < len(shown["nodes"]):
        sys.exit(1)


@cluster_group.command("forget")
@click.argument("name")
@command
def cluster_forget(settings: Settings, name: str) -> None:
    """Take the dead node NAME off the list (its local-only files stay unreadable until it
    is back: they are only on its disk)."""
    with Service.opened(settings) as service:
        registry = service.store.registry
        with registry.transaction() as tx:
            node = tx.nodes.get(name)
            if node is None:
                raise NotFound(f"no node named {name!r}")
            if node.alive(settings.cluster.dead_after):
                raise Conflict(f"node {name!r} is alive (heartbeat {node.age:.0f} s ago): "
                               "stop it first")
            tx.nodes.forget(name)
    click.echo(f"forgot node {name!r}")
