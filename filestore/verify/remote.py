"""The remotes as the check sees them: `remote_view` opens every configured remote for the plain,
blocking code of the check (`RemoteView`: HEAD, download-and-hash, a listing a page at a time),
and `Listing` consumes one remote's listing in step with the rows (both in path order)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Generator, Iterator
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..config import Settings
from ..errors import RemoteNotFound
from ..remote import Remote, RemoteObject, connected_remotes

_BATCH = 500  # objects a listing call (the size of the check's other pages)

# A remote that holds a file's bytes, proven by download: (its name, the object as hashed).
Proven = tuple[str, RemoteObject]


class RemoteView:
    """One remote for the check's plain, blocking code: every call runs on a blocking
    portal's event loop (the remotes are async; the check is a loop in the CLI's thread)."""

    def __init__(self, portal: BlockingPortal, remote: Remote) -> None:
        self.portal = portal
        self.remote = remote

    def head(self, path: str) -> RemoteObject | None:
        return self.portal.call(self.remote.head, path)

    def digest(self, path: str) -> RemoteObject | None:
        """The object with the SHA-256 of its bytes, downloaded and hashed; None if missing."""
        return self.portal.call(_digest, self.remote, path)

    def objects(self) -> Generator[RemoteObject]:
        """Every object under the prefix, in key order as the store lists them; a page of them
        per call into the portal."""
        listing = aiter(self.remote.list_objects())
        try:
            while batch := self.portal.call(_next_batch, listing, _BATCH):
                yield from batch
        finally:
            aclose = getattr(listing, "aclose", None)
            if aclose is not None:
                self.portal.call(aclose)


async def _next_batch(listing: Any, limit: int) -> list[RemoteObject]:
    batch: list[RemoteObject] = []
    with contextlib.suppress(StopAsyncIteration):
        while len(batch) < limit:
            batch.append(await anext(listing))
    return batch


async def _digest(remote: Remote, path: str) -> RemoteObject | None:
    digest, size = hashlib.sha256(), 0
    try:
        async for block in remote.get(path):
            digest.update(block)
            size += len(block)
    except RemoteNotFound:
        return None
    return RemoteObject(path, size, sha256=digest.hexdigest())


@contextlib.contextmanager
def remote_view(settings: Settings) -> Iterator[dict[str, RemoteView]]:
    """Every configured remote by name ("default" first), opened for the length of the block.
    One that cannot be opened, or two that overlap, is a `ConfigError` naming it."""
    with start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(connected_remotes(settings)) as remotes:
        yield {name: RemoteView(portal, remote) for name, remote in remotes.items()}


class Listing:
    """The remote's objects, consumed in step with the rows (both in path order). Were a store
    to list out of order, nothing would be reported wrongly: an object met out of step is looked
    up on its own, and a row's missing object is confirmed with a HEAD before it is reported."""

    def __init__(self, objects: Generator[RemoteObject]) -> None:
        self._objects = objects
        self._next = next(objects, None)
        self.count = 0

    def close(self) -> None:
        self._objects.close()  # ends the store's listing now, while its event loop runs

    def pop_before(self, path: str | None) -> RemoteObject | None:
        """The next object whose path sorts before `path` (None: to the end), if any."""
        if self._next is None or (path is not None and self._next.path >= path):
            return None
        return self._pop()

    def pop_at(self, path: str) -> RemoteObject | None:
        return self._pop() if self._next is not None and self._next.path == path else None

    def _pop(self) -> RemoteObject | None:
        found, self._next = self._next, next(self._objects, None)
        self.count += found is not None
        return found
