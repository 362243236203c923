"""`cluster.replicas = 1`: a PUT is acknowledged only once another live node holds its bytes.

The receiving node (the holder) takes the body into its temp file as always (hashed), then,
before it records anything, sends that file to another live node over
`PUT /_cluster/replicas/{path}` (signed, as every node-to-node call) while it fsyncs its own.
That node receives it into a temp file of its own, checks the SHA-256 the holder names, fsyncs
it and renames it into `replicas/` (`LocalStore.install_replica`) before it answers 201
(`endpoint.replica_put`). Only then, its own fsync done too, does
the holder record the file, naming the other node as its `replica` in the same transaction as
the bytes, and acknowledge the PUT. From then on either node may upload it (the queue's lease
makes it one), and either serves it to the others (`peers.py` asks the replica when the holder
is dead): a whole node lost before the upload loses nothing acknowledged.

Which node: the live nodes ranked by rendezvous hashing of the path (the same path goes to the
same node while the cluster stays the same), the first that takes the copy. None took it: the
PUT fails with 503 and nothing is recorded. A copy whose PUT then failed to commit is named by
no row; the sweeper removes such copies once nobody wrote them for a while
(`sweeper.sweep_replicas`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp
import anyio

from ..config import Settings
from ..errors import RemoteUnavailable
from ..local import Received
from .calls import sign

if TYPE_CHECKING:
    from ..store import Store
    from .peers import Peers

log = logging.getLogger("filestore.cluster")

ENDPOINT = "/_cluster/replicas/"


def _timeout(settings: Settings) -> aiohttp.ClientTimeout:
    """A node that takes the connection and then stalls does not hold the PUT forever."""
    return aiohttp.ClientTimeout(total=None, sock_connect=3.0,
                                 sock_read=settings.cache.fill_timeout)


def ranked(store: Store, peers: Peers, path: str) -> list[tuple[str, str]]:
    """The other live nodes (name, URL), in this path's rendezvous order."""
    nodes = [(n.name, n.url) for n in peers.others_alive()]
    return sorted(nodes, key=lambda node: hashlib.sha256(
        f"{node[0]}\n{path}".encode()).digest(), reverse=True)


async def push(store: Store, peers: Peers, path: str, received: Received,
               meanwhile: Callable[[Received], None] | None = None) -> str:
    """Have another live node keep `received` for `path`; its name. `meanwhile` (this
    node's own fsync of the body) runs in a thread alongside: each waits on its own disk."""
    if meanwhile is None:
        return await _push(store, peers, path, received)
    taken: list[str] = []
    failed: list[Exception] = []

    async def copy() -> None:
        try:
            taken.append(await _push(store, peers, path, received))
        except Exception as exc:  # raised once both are done (a task group would wrap it)
            failed.append(exc)

    async def own() -> None:
        try:
            await anyio.to_thread.run_sync(meanwhile, received)
        except Exception as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(copy)
        tg.start_soon(own)
    if failed:
        raise failed[0]
    return taken[0]


async def _push(store: Store, peers: Peers, path: str, received: Received) -> str:
    settings = store.settings
    failures: list[str] = []
    for name, url in ranked(store, peers, path):
        headers = sign({"x-checksum-sha256": received.sha256}, settings.cluster.secret,
                       "PUT", ENDPOINT + path, "", settings.node, name)
        try:
            with open(received.tmp, "rb") as body:
                async with peers.session().put(f"{url}{ENDPOINT}{quote(path, safe='/')}",
                                               data=body, headers=headers,
                                               timeout=_timeout(settings)) as answer:
                    if answer.status == 201:
                        return name
                    failures.append(f"{name}: HTTP {answer.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    if failures:
        log.warning("cluster: no node took a copy of %r: %s", path, "; ".join(failures))
    raise RemoteUnavailable(f"no other node took a copy of {path!r} (cluster.replicas = 1"
                            f"{'' if failures else ', and no other node is alive'})")
