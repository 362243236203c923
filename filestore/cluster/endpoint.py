"""The internal endpoint other nodes read this node's local files from (`peers.py`):

`GET /_cluster/files/{path}?version=V`, signed by the calling node (`calls.py`), answers the
bytes of version V of the file at `path` if this node holds them (its local bytes, or its
cached copy of that very version once uploaded), whole or one `Range`; else 404, and the caller
answers its client 503 (the file changed meanwhile: its next read finds the new state). And
`PUT /_cluster/replicas/{path}`: a copy another node keeps here (`replicas.py`). Nothing else
is served here, and no other node's or account's namespace is ever reachable: the path goes
through the same check as `/files/`, and only bytes this node's record names are read.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import paths
from ..api import FileRoute
from ..errors import BadRequest, ChecksumMismatch, NotFound
from ..ranges import RangeNotSatisfiable, parse_range
from ..responses import FileBody, LocalBytes
from ..service import Service, service_of
from . import replicas
from .calls import verify
from .peers import ENDPOINT


def _called(request: Request) -> tuple[Service, str]:
    """The service and the call's path, once the call proved it comes from another node."""
    service = service_of(request.app.state)
    settings = service.settings
    verify(settings.cluster.secret, request.method, request.scope["path"],
           request.scope["query_string"].decode("latin-1"), request.headers, settings.node)
    return service, paths.normalize(request.path_params["path"])


async def peer_file(request: Request) -> FileBody:
    service, path = _called(request)
    version = request.query_params.get("version", "")
    if not version.isdigit() or len(version) > 18:
        raise BadRequest("version: the file's version, a whole number")
    record, fd, _ = await service.open_current(path)
    if fd is None or record.version != int(version):
        if fd is not None:
            LocalBytes(fd).close()
        raise NotFound(f"this node holds no bytes of version {version} of {path!r}")
    source = LocalBytes(fd)
    try:
        header = request.headers.get("range")
        ranges = parse_range(header, record.size) if header else None
        if ranges is not None and len(ranges) > 1:
            raise BadRequest("one range at most")
    except (BadRequest, RangeNotSatisfiable) as exc:
        source.close()
        raise BadRequest(f"range: {exc}") from None
    headers = {"content-type": "application/octet-stream", "x-filestore-version": version,
               "x-checksum-sha256": record.sha256}
    return FileBody(source, record.size, headers, ranges=ranges)


async def replica_put(request: Request) -> JSONResponse:
    """Another node's PUT, kept here until it is uploaded."""
    service, path = _called(request)
    store = service.store
    sha256 = request.headers.get("x-checksum-sha256", "")
    if len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        raise BadRequest("x-checksum-sha256: the body's SHA-256, 64 lower-case hex digits")
    declared = request.headers.get("content-length")
    received = await store.local.receive(
        request.stream(), service.settings.storage.max_upload_size, store.events.make_room,
        int(declared) if declared and declared.isdigit() else 0)
    try:
        if received.sha256 != sha256:
            raise ChecksumMismatch(f"the copy's SHA-256 is {received.sha256}, not {sha256}")
        await anyio.to_thread.run_sync(store.local.install_replica, received.tmp, path, sha256)
    except BaseException:
        store.local.discard(received)
        raise
    return JSONResponse({"path": path, "size": received.size, "sha256": sha256},
                        status_code=201)


routes = [FileRoute(peer_file, ["GET"], prefix=ENDPOINT),
          FileRoute(replica_put, ["PUT"], prefix=replicas.ENDPOINT)]
