"""What filestore needs of a remote store, and nothing more.

A remote stores objects under `{prefix}/{path}`: the key is always derived from a normalised file
path, so filestore can never read, overwrite or delete a key outside its own prefix, and the
bucket stays readable as plain files without filestore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, Protocol

import aiohttp

# Whether the upload of a path is running right now (on any node): see `Remote.cleanup`.
InFlight = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class RemoteObject:
    path: str  # the filestore path (key minus the remote's prefix)
    size: int
    etag: str = ""
    # Hex SHA-256 of the whole object when the store reports it (None: not reported).
    sha256: str | None = None


class Readable(Protocol):
    """What a cache fill reads an object's bytes from: a remote, or the node holding them."""

    def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's bytes `start..end` (inclusive; None: to the end)."""
        ...


class Remote(Protocol):
    name: str
    # Where it points, safe to show: never contains a secret.
    display_url: str
    # The paths it may hold start with this ("ACCOUNT/" for an account's own remote; else "").
    scope: str

    def key_for(self, path: str) -> str: ...

    async def open(self) -> None:
        """Connect (once, in the server's lifespan)."""
        ...

    async def cleanup(self, in_flight: InFlight | None = None) -> int:
        """Remove what a crashed upload left behind (unfinished multipart uploads, temp files);
        only called when no other process uses the data directory. How many were removed.
        `in_flight`: other nodes share the remote (a shared registry), and it tells whether a
        path's upload is running on one of them right now: that upload's leftovers stay."""
        ...

    async def put(self, path: str, source: BinaryIO, size: int, sha256: str,
                  content_type: str, md5: str | None = None) -> RemoteObject:
        """Upload the open file `source` (`size` bytes with this `sha256`, and this hex `md5`
        when known) and verify the stored copy (size and checksum) before returning; raise
        `RemoteIntegrityError` if it differs."""
        ...

    def get(self, path: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's bytes `start..end` (inclusive; None: to the end)."""
        ...

    async def head(self, path: str) -> RemoteObject | None: ...

    async def delete(self, path: str) -> None:
        """Delete the object; deleting a missing object is not an error."""
        ...

    def list_objects(self, prefix: str = "") -> AsyncIterator[RemoteObject]: ...

    async def close(self) -> None: ...


async def arrived_chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """An HTTP response body's bytes in the pieces the connection delivered them in (a few
    hundred KiB each from a fast peer or store), as soon as each arrives.

    Joining them into fixed-size chunks (aiohttp's `iter_chunked`, botocore's `iter_chunks`)
    costs a copy of every byte, and makes the first byte wait until a whole chunk is there: a
    cache fill's readers get it as the connection does. `readchunk` still fails a body that
    ends before its Content-Length (`ClientPayloadError`)."""
    while True:
        chunk, end_of_http_chunk = await content.readchunk()
        if chunk:
            yield chunk
        elif not end_of_http_chunk:  # (b"", True) only marks a chunk boundary
            return
