"""A node's name is part of its data: the registry records it as the holder of the files on
this disk. So the first start of a data directory with a shared registry writes the name into
`data_dir/node`, and every later start checks it: a host renamed (a container recreated), or a
config that names another node, would otherwise leave this disk's files to a node that no
longer exists. Two live nodes with one name would each take the other's files for its own:
a start is refused while a node of that name beats at another URL."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError
from ..fsutil import fsync_dir
from ..registry import Tables


def claim(root: Path, read: Tables, settings: Settings) -> None:
    """Check (or, on the first start, record) that this data directory is `settings.node`'s.
    Called under the data directory's start-up lock."""
    name, path = settings.node, root / "node"
    try:
        recorded = path.read_text().strip()
    except FileNotFoundError:
        recorded = ""
    if recorded and recorded != name:
        raise ConfigError(f"this data directory is node {recorded!r}'s (the registry records "
                          f"its files as that node's), but this node is {name!r}: set "
                          f"cluster.node = {recorded!r}")
    live = read.nodes.get(name)
    if live is not None and live.url != settings.advertise and live.alive(
            settings.cluster.dead_after):
        raise ConfigError(f"a node named {name!r} is alive at {live.url} (heartbeat "
                          f"{live.age:.0f} s ago): every node needs its own "
                          "cluster.node (or, if it moved here, wait cluster.dead_after)")
    if not recorded:
        tmp = path.with_name("node.tmp")
        tmp.write_text(name + "\n")
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        fsync_dir(root)
