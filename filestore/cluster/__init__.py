"""Several nodes over one registry (PostgreSQL) and one bucket: what each node does for the others.

- `heartbeat.py`: every node writes its row in `nodes` (its URL, a heartbeat every few seconds);
  a node silent for `cluster.dead_after` is shown dead and not asked for bytes.
- `calls.py`: node-to-node calls, signed with the shared `cluster.secret` (HMAC-SHA256).
- `peers.py`: a file another node holds (not uploaded yet) is read from that node, through this
  node's cache (one fill per object, checked against the recorded SHA-256, as from the cloud).
- `endpoint.py`: the internal endpoint those reads call, `/_cluster/files/{path}?version=V`.
- `replicas.py`: `cluster.replicas = 1`, a PUT acknowledged once another node keeps a copy.
- `sweeper.py`: bytes a change on another node superseded (a DELETE or re-PUT of a file this
  node held or had cached) are dropped here within a second or two.
- `status.py`: each node's figures, for `filestore cluster status` and the admin page.

With a SQLite registry there is one node: it beats (so `cluster status` shows it), nothing
else here runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from . import replicas
from .heartbeat import beat_every
from .sweeper import sweep_every

if TYPE_CHECKING:
    from ..store import Store


__all__ = ["replicas", "run"]


async def run(store: Store, *,
              task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """The node's part in the cluster, for the server's lifetime; started once the node's
    first heartbeat was tried (heartbeat.py: before the server answers)."""
    async with anyio.create_task_group() as tg:
        await tg.start(beat_every, store)
        if store.shared:
            tg.start_soon(sweep_every, store)
        task_status.started()
