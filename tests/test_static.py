"""nginx answers public hits itself (`server.static_hits`): the shipped `deploy/nginx.conf`, run
by a real nginx on 127.0.0.1 in front of a real uvicorn, serves the files filestore linked into
DATA/static with the very headers filestore gives; reads after a PUT's or DELETE's answer see
the new state; whatever needs a check, or whose headers nginx would give otherwise, is
filestore's to answer.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import LiveServer, counters, uploaded, wait_for
from test_accel import PREFIX, Nginx, behind_nginx, needs_nginx  # noqa: F401 (a fixture)

from filestore.config import load_settings
from filestore.errors import ConfigError
from filestore.static import NginxTypes

pytestmark = pytest.mark.timeout(120)

KIB = 1024
SIZES = (KIB, 64 * KIB, 1024 * KIB, 32 * 1024 * KIB)
# The headers a client may compare between nginx's answer and filestore's own.
COMPARED = ("etag", "last-modified", "content-type", "content-length", "accept-ranges",
            "x-content-type-options", "content-security-policy", "cache-control",
            "content-disposition", "content-range")


@pytest.fixture
def static_nginx(request: pytest.FixtureRequest) -> Callable[..., tuple[LiveServer, Nginx]]:
    """`behind_nginx` (test_accel.py), with `server.static_hits` on."""
    return functools.partial(request.getfixturevalue("behind_nginx"), server__static_hits="true")


def answered_by(nginx: Nginx, request_uri: str, count: int, method: str = "GET") -> str:
    """Who made the `count`-th answer to `method request_uri`: "static" (nginx, from the static
    tree, filestore never asked) or "filestore" (asked, whatever sent the bytes then)."""
    def entries() -> list[list[str]]:
        found = [e for e in nginx.log() if e[0] == f"{method} {request_uri}"]
        return found if len(found) >= count else []

    upstream = wait_for(entries, timeout=5)[count - 1][3]
    return "static" if upstream == "-" else "filestore"


def headers_of(reply: httpx.Response) -> dict[str, str | None]:
    return {name: reply.headers.get(name) for name in COMPARED}


def put(client: httpx.Client, path: str, data: bytes, **headers: str) -> httpx.Response:
    reply = client.put(f"/files/{quote(path)}", content=data, headers=headers)
    assert reply.status_code in (200, 201), reply.text
    return reply


def link_of(server: LiveServer, path: str) -> Path:
    return server.settings.data_dir / "static" / "files" / path


@needs_nginx
def test_hits_are_nginxs_with_filestores_own_headers_on_every_size(static_nginx: Any) -> None:
    server, nginx = static_nginx()
    with nginx.client(server.token) as writer, nginx.client() as reader, \
            httpx.Client(base_url=server.url, timeout=30) as direct:
        for size in SIZES:
            path = f"sizes/{size}.bin"
            data = os.urandom(size)
            answered = put(writer, path, data)
            reply = reader.get(f"/files/{path}")
            assert reply.status_code == 200 and reply.content == data
            assert answered_by(nginx, f"/files/{path}", 1) == "static"
            own = direct.get(f"/files/{path}")  # filestore itself, past nginx
            assert own.content == data
            assert headers_of(reply) == headers_of(own)
            # The PUT's answer named the same ETag: nginx's own, mtime and size in hex.
            assert reply.headers["etag"] == answered.headers["etag"]
            assert reply.headers["etag"].endswith(f'-{size:x}"')
            head = reader.head(f"/files/{path}")
            assert headers_of(head) == headers_of(direct.head(f"/files/{path}"))


@needs_nginx
def test_reads_right_after_a_put_or_delete_see_the_new_state(static_nginx: Any) -> None:
    server, nginx = static_nginx()
    with nginx.client(server.token) as writer, nginx.client() as reader:
        for size in SIZES[:3]:
            path = f"raw/{size}.bin"
            seen: set[str] = set()
            for _ in range(3):  # versions of one size, within the same second or not
                data = os.urandom(size)
                put(writer, path, data)
                reply = reader.get(f"/files/{path}")
                assert reply.status_code == 200 and reply.content == data
                assert reply.headers["etag"] not in seen  # never a former version's ETag
                seen.add(reply.headers["etag"])
            assert writer.delete(f"/files/{path}").status_code == 204
            assert reader.get(f"/files/{path}").status_code == 404
            assert not link_of(server, path).exists()
            data = os.urandom(size)  # the same size again, perhaps within the same second
            put(writer, path, data)
            reply = reader.get(f"/files/{path}")
            assert reply.content == data and reply.headers["etag"] not in seen


@needs_nginx
def test_revalidation_and_ranges_are_answered_alike_by_either(static_nginx: Any) -> None:
    server, nginx = static_nginx()
    data = os.urandom(200 * KIB)
    with nginx.client(server.token) as writer, nginx.client() as reader, \
            httpx.Client(base_url=server.url, timeout=30) as direct:
        put(writer, "rv/a.bin", data)
        first = reader.get("/files/rv/a.bin")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        cases: list[dict[str, str]] = [
            {"if-none-match": etag}, {"if-none-match": '"other"'},
            {"if-modified-since": modified}, {"if-match": '"other"'},
            {"range": "bytes=100-199"}, {"range": "bytes=-10"}, {"range": "bytes=999999999-"},
            {"range": "bytes=0-9", "if-range": etag}, {"range": "bytes=0-9", "if-range": '"x"'},
        ]
        for number, case in enumerate(cases, 2):
            via_nginx = reader.get("/files/rv/a.bin", headers=case)
            assert answered_by(nginx, "/files/rv/a.bin", number) == "static", case
            own = direct.get("/files/rv/a.bin", headers=case)
            assert via_nginx.status_code == own.status_code, case
            if own.status_code in (200, 206):  # an error's body is each server's own words
                assert via_nginx.content == own.content, case
            assert via_nginx.headers.get("etag") == own.headers.get("etag"), case
            assert via_nginx.headers.get("content-range") == own.headers.get("content-range")


@needs_nginx
def test_reads_that_need_a_check_or_other_headers_are_filestores(static_nginx: Any,
                                                                 tmp_path: Path) -> None:
    config = tmp_path / "filestore.toml"
    config.write_text('[[plan]]\nprefix = "cc/"\ncache_control = "max-age=60"\n')
    server, nginx = static_nginx(config=config)
    data = b"<p>hello</p>"
    with nginx.client(server.token) as writer, nginx.client() as reader:
        put(writer, "page.html", data, **{"content-type": "text/html"})  # an attachment
        put(writer, "named.png", data, **{"content-type": "text/plain"})  # not nginx's type
        put(writer, "cc/a.txt", data, **{"content-type": "text/plain"})  # a Cache-Control
        put(writer, "plain.txt", data, **{"content-type": "text/plain"})
        for path in ("page.html", "named.png", "cc/a.txt"):
            reply = reader.get(f"/files/{path}")
            assert reply.status_code == 200 and reply.content == data
            assert answered_by(nginx, f"/files/{path}", 1) == "filestore", path
            assert not link_of(server, path).exists()
        assert reader.get("/files/page.html").headers["content-disposition"].startswith(
            "attachment")
        assert reader.get("/files/cc/a.txt").headers["cache-control"] == "max-age=60"
        # A credential or a query: filestore checks it, even for a linked file.
        assert reader.get("/files/plain.txt").status_code == 200
        assert answered_by(nginx, "/files/plain.txt", 1) == "static"
        # (A public read ignores a token, so any passes: what matters is who looked.)
        assert reader.get("/files/plain.txt",
                          headers={"authorization": "Bearer any"}).status_code == 200
        assert answered_by(nginx, "/files/plain.txt", 2) == "filestore"
        assert reader.get("/files/plain.txt?expires=1&sig=x").status_code == 403
        assert answered_by(nginx, "/files/plain.txt?expires=1&sig=x", 1) == "filestore"


@needs_nginx
def test_private_reads_never_link(static_nginx: Any) -> None:
    server, nginx = static_nginx(auth__public_read="false")
    with nginx.client(server.token) as writer, nginx.client() as reader:
        put(writer, "secret.txt", b"s", **{"content-type": "text/plain"})
        assert reader.get("/files/secret.txt").status_code == 401
        assert writer.get("/files/secret.txt").content == b"s"
        assert not link_of(server, "secret.txt").exists()


@needs_nginx
def test_cache_entries_are_linked_when_filled_and_unlinked_before_eviction(
        static_nginx: Any) -> None:
    server, nginx = static_nginx(upload__delay="0s")
    data = os.urandom(300 * KIB)
    path = "up/loaded.bin"
    with nginx.client(server.token) as client:
        put(client, path, data)
        wait_for(lambda: uploaded(server, path))  # moved to the cache area: the link stays
        first = counters(server).get("cache.hits", 0)
        reply = client.get(f"/files/{path}")  # a token: filestore's (hands it to nginx)
        wait_for(lambda: counters(server).get("cache.hits", 0) == first + 1)
        with nginx.client() as reader:
            before = counters(server)
            reply = reader.get(f"/files/{path}")
            assert reply.content == data and answered_by(nginx, f"/files/{path}", 2) == "static"
            # The hit nginx answered is counted, as filestore counts its own.
            wait_for(lambda: counters(server).get("cache.hits", 0)
                     == before.get("cache.hits", 0) + 1)
            assert client.post(f"/admin/api/files/{quote(path)}/evict").status_code == 200
            assert not link_of(server, path).exists()
            reply = reader.get(f"/files/{path}")  # a miss: filestore reads the cloud
            assert reply.content == data and answered_by(nginx, f"/files/{path}", 3) == "filestore"
            wait_for(lambda: link_of(server, path).exists())  # the fill linked it
            reply = reader.get(f"/files/{path}")
            assert reply.content == data and answered_by(nginx, f"/files/{path}", 4) == "static"
            assert reply.headers["etag"].endswith(f'-{len(data):x}"')


@needs_nginx
def test_a_restart_clears_the_tree_and_reads_link_again(static_nginx: Any, make_server: Any
                                                        ) -> None:
    server, nginx = static_nginx()
    with nginx.client(server.token) as writer:
        put(writer, "r/a.txt", b"abc", **{"content-type": "text/plain"})
    assert link_of(server, "r/a.txt").exists()
    data_dir = server.settings.data_dir
    server.stop()
    # A link left behind that no longer is the file's (as a power loss may leave one).
    stale = data_dir / "static" / "files" / "r" / "a.txt"
    stale.unlink()
    stale.write_bytes(b"old")
    again = make_server(data_dir=str(data_dir), server__accel_redirect=PREFIX,
                        server__static_hits="true")
    assert not link_of(again, "r/a.txt").exists()
    with httpx.Client(base_url=again.url) as direct:
        assert direct.get("/files/r/a.txt").content == b"abc"
    assert link_of(again, "r/a.txt").read_bytes() == b"abc"  # linked by that GET


def test_static_hits_need_a_single_node(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="single node"):
        load_settings(None, environ={
            "FILESTORE_STORAGE__DATA_DIR": str(tmp_path),
            "FILESTORE_SERVER__STATIC_HITS": "true",
            "FILESTORE_REGISTRY__URL": "postgresql://u@127.0.0.1:1/db"})


def test_nginx_types_are_looked_up_as_nginx_does(tmp_path: Path) -> None:
    types = tmp_path / "mime.types"
    types.write_text("types {\n  text/html html htm; # a comment\n  image/png png;\n"
                     "  application/x-tar tar;\n  application/gzip gz;\n  text/plain png;\n}\n")
    found = NginxTypes(types)
    assert found.type_of("a/b.HTML") == "text/html"
    assert found.type_of("a/b.png") == "text/plain"  # a later line wins, as in nginx
    assert found.type_of("a/b.tar.gz") == "application/gzip"
    assert found.type_of("a/.png") == "application/octet-stream"  # a dot that begins a name
    assert found.type_of("a.png/b") == "application/octet-stream"  # in a directory's name
    assert found.type_of("b.") == "application/octet-stream"
    assert NginxTypes(tmp_path / "missing").type_of("a.png") == "application/octet-stream"


def test_plain_etags_never_repeat_for_a_path(make_server: Any) -> None:
    """Two versions of a path never share nginx's ETag (mtime and size), a DELETE between them
    or not: a later one in the same second gets the SHA-256 one (the same bytes, the same)."""
    server = make_server(server__static_hits="true")
    sha = f'"{hashlib.sha256(b"x" * 10).hexdigest()}"'
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {server.token}"}
                      ) as client:
        etags = []
        started = time.time()
        for _ in range(6):
            etags.append(put(client, "same.bin", b"x" * 10).headers["etag"])
            assert client.delete("/files/same.bin").status_code == 204
        seconds = int(time.time()) - int(started) + 1
    plain = [e for e in etags if e != sha]
    assert all(e.endswith('-a"') for e in plain)
    assert len(plain) == len(set(plain)) <= seconds  # one per second at most
    assert plain and etags[0] in plain
