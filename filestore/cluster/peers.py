"""Reading a file another node holds: its only bytes are on that node's disk (not uploaded yet).

The read-through cache (`cache/readthrough.py`) reads such a file as it reads one from the
cloud, one fill per object with every waiting client served from it, and the fill checks the
whole body against the recorded SHA-256 before the last byte goes out; only its source is the
holder's internal endpoint (`endpoint.py`) instead of a remote. A holder that is dead (no
heartbeat for `cluster.dead_after`), unreachable, or that no longer holds this version, is a
`RemoteUnavailable`: 503 with Retry-After, never a wrong byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import quote

import aiohttp

from ..errors import RemoteUnavailable
from ..registry import FileRecord, Node
from ..remote.base import arrived_chunks
from .calls import sign

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("filestore.cluster")

ENDPOINT = "/_cluster/files/"
# A node that does not answer a connection this fast is taken for down (the fill's own stall
# timer, cache.fill_timeout, watches the bytes after that).
_CONNECT_TIMEOUT = 3.0
_NODES_FOR = 1.0  # seconds a read of the nodes table is used for


class Peers:
    """This process's reads from other nodes: one HTTP client, opened at the first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._session: aiohttp.ClientSession | None = None
        self._nodes: dict[str, Node] = {}
        self._nodes_read = -_NODES_FOR  # monotonic

    def nodes(self, *, wanted: str = "", fresh: bool = False) -> dict[str, Node]:
        """Every node by name, as the registry said at most `_NODES_FOR` seconds ago: a peer
        read or a replicated PUT need not read the table each time, heartbeats are seconds
        apart. Read again at once when `wanted` is not among them (a node that just started)
        or was dead then: a node started again beats as it starts, and a "dead" kept from
        before would refuse the reads of what it took since, for up to `_NODES_FOR` (what
        test_cluster_crash found). A holder that stays dead costs a read of the few rows per
        read of its files, each a 503 anyway. `fresh`: read again in any case."""
        now = time.monotonic()
        known = self._nodes.get(wanted) if wanted else None
        if fresh or now - self._nodes_read >= _NODES_FOR or (wanted and (
                known is None or not known.alive(self.store.settings.cluster.dead_after))):
            self._nodes = {n.name: n for n in self.store.registry.read.nodes.all()}
            self._nodes_read = now
        return self._nodes

    def others_alive(self) -> list[Node]:
        """The other nodes alive, as `nodes` says; read again at once when none looked so
        (one may have come back since, as `nodes` reads again for a wanted node)."""
        settings = self.store.settings
        for fresh in (False, True):
            found = [n for n in self.nodes(fresh=fresh).values()
                     if n.name != settings.node and n.alive(settings.cluster.dead_after)]
            if found:
                break
        return found

    def source(self, record: FileRecord) -> PeerBytes:
        """Where `record`'s bytes are read from: its holder, if it can be asked."""
        settings = self.store.settings
        holder = record.holder
        if not settings.cluster.secret:
            raise RemoteUnavailable(f"{record.path!r} is on node {holder!r} only (not uploaded "
                                    "yet), and without cluster.secret this node cannot read it "
                                    "from there")
        known = self.nodes(wanted=holder)
        node = known.get(holder)
        # The holder, then the other node keeping a copy (cluster.replicas), if alive.
        copy = known.get(record.replica) if record.replica else None
        alive = [n for n in (node, copy)
                 if n is not None and n.alive(settings.cluster.dead_after)]
        if not alive:
            since = f"{node.age:.0f} s ago" if node is not None else "never"
            raise RemoteUnavailable(f"{record.path!r} is on node {holder!r} only (not uploaded "
                                    f"yet), which is down (last heartbeat: {since})")
        return PeerBytes(self, alive, record.version)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT),
                auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class PeerBytes:
    """One version of one file on the nodes holding it (a `remote.Readable`): the first that
    answers sends it. A node that cannot be reached, or no longer holds it, before its first
    byte makes the next one asked (a holder killed a moment ago still looks alive)."""

    def __init__(self, peers: Peers, nodes: list[Node], version: int) -> None:
        self.peers = peers
        self.nodes = nodes
        self.version = version
        self.name = f"node {nodes[0].name}"

    async def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        failures = []
        for node in self.nodes:
            started = False
            try:
                async for chunk in self._from(node, path, start, end):
                    started = True
                    yield chunk
                return
            except RemoteUnavailable as exc:
                if started:
                    raise
                failures.append(exc.detail)
        raise RemoteUnavailable("; ".join(failures))

    async def _from(self, node: Node, path: str, start: int, end: int | None
                    ) -> AsyncIterator[bytes]:
        settings = self.peers.store.settings
        query = f"version={self.version}"
        asked = {"range": f"bytes={start}-{'' if end is None else end}"} if (
            start or end is not None) else {}
        headers = sign(asked, settings.cluster.secret, "GET", ENDPOINT + path, query,
                       settings.node, node.name)
        url = f"{node.url}{ENDPOINT}{quote(path, safe='/')}?{query}"
        # What the client is told names the node, never its address or the error's text (the
        # log has them).
        unreachable = (f"{path!r} is on node {node.name!r} (not uploaded yet), which cannot "
                       "be read from now")
        try:
            async with self.peers.session().get(url, headers=headers) as response:
                if response.status == 404:
                    raise RemoteUnavailable(f"node {node.name!r} no longer holds this "
                                            f"version of {path!r}: it changed meanwhile")
                if response.status not in (200, 206):
                    log.warning("cluster: reading %r from node %r (%s): HTTP %d", path,
                                node.name, node.url, response.status)
                    raise RemoteUnavailable(unreachable)
                async for chunk in arrived_chunks(response.content):
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("cluster: reading %r from node %r (%s): %s: %s", path, node.name,
                        node.url, type(exc).__name__, exc)
            raise RemoteUnavailable(unreachable) from None
