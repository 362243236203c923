"""filestore behind nginx with `server.accel_redirect`: the shipped `deploy/nginx.conf`, run by a
real nginx on 127.0.0.1 in front of a real uvicorn, hands local hits to nginx, which sends them
exactly as filestore would have; misses and writes stay with filestore.

nginx is found on PATH or in /usr/sbin (CI installs it with apt); without it these tests skip.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import http.client
import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import LiveServer, counters, free_port, uploaded, wait_for

from filestore.config import load_settings
from filestore.errors import ConfigError

NGINX = shutil.which("nginx", path=os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx.conf"
PREFIX = "/_filestore/"

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed "
                                 "(CI installs it: apt-get install -y nginx)")

# The main config around the shipped server block (which belongs in nginx's `http` block): a
# prefix of its own, and an access log that says where each answer came from.
MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
  # As distributions' nginx.conf has it: the shipped server block must turn it off itself.
  gzip on; gzip_types *;
  open_file_cache max=1000 inactive=60s;  # as tuning guides have it for static files
  log_format accel '$request_method $request_uri|$uri|$status|$upstream_status';
  access_log {prefix}/access.log accel;
  client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  include {prefix}/filestore.conf;
}}
"""


def deploy_conf(port: int, upstream_port: int, data_dir: Path) -> str:
    """`deploy/nginx.conf` with its port, upstream and data directory substituted: each must
    be found, so the shipped file and this test cannot drift apart."""
    text = DEPLOY_CONF.read_text()
    for old, new, count in (
        ("listen 80;", f"listen 127.0.0.1:{port};", 1),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};", 1),
        ("alias /srv/filestore/", f"alias {data_dir}/", 2),
        ("root /srv/filestore/static;", f"root {data_dir}/static;", 1),
        ("/srv/filestore/hits.log", f"{data_dir}/hits.log", 1),
        # The hits' own log replaces the one the tests read: log them there too.
        ("flush=1s;\n", "flush=1s;\n        access_log access.log accel;\n", 1),
    ):
        assert text.count(old) == count, f"deploy/nginx.conf no longer has {old!r} x{count}"
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx with the shipped config in front of filestore's `upstream_port`."""

    def __init__(self, prefix: Path, upstream_port: int, data_dir: Path) -> None:
        assert NGINX is not None
        prefix.mkdir()
        (prefix / "tmp").mkdir()
        self.prefix = prefix
        self.port = free_port()
        (prefix / "filestore.conf").write_text(deploy_conf(self.port, upstream_port, data_dir))
        # As root, nginx's workers would run as nobody, who cannot enter pytest's 0700 tmp_path.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
             "-c", str(prefix / "nginx.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._up, timeout=10)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.proc.stdout.read()!r}"  # type: ignore[union-attr]
                                 f" {self.error_log()}")
        with contextlib.suppress(OSError), contextlib.closing(
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)) as conn:
            conn.connect()
            return True
        return False

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.prefix / "error.log").read_text()
        return ""

    def log(self) -> list[list[str]]:
        """The access log: [request, final uri, status, upstream statuses] per request."""
        with contextlib.suppress(FileNotFoundError):
            lines = (self.prefix / "access.log").read_text().splitlines()
            return [line.split("|") for line in lines]
        return []

    def served(self, request_uri: str, count: int = 1, method: str = "GET") -> str:
        """How the `count`-th answer to `method request_uri` was made: "nginx" (redirected, sent
        from the file), "fallback" (redirected, file gone, asked filestore again) or
        "filestore" (filestore sent the bytes)."""

        def entries() -> list[list[str]]:
            found = [e for e in self.log() if e[0] == f"{method} {request_uri}"]
            return found if len(found) >= count else []

        _, uri, _, upstream = wait_for(entries, timeout=5)[count - 1]
        if not uri.startswith(PREFIX):
            return "filestore"
        return "nginx" if upstream.count(":") == 0 else "fallback"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def behind_nginx(make_server: Any, tmp_path: Path) -> Iterator[Callable[..., tuple[Any, Nginx]]]:
    """Start filestore with accel_redirect (and `config`, `overrides`), and nginx in front of
    it."""
    started: list[Nginx] = []

    def start(config: Path | None = None, **overrides: str) -> tuple[LiveServer, Nginx]:
        server = make_server(config=config, server__accel_redirect=PREFIX, **overrides)
        nginx = Nginx(tmp_path / f"nginx{len(started)}", server.port, server.settings.data_dir)
        started.append(nginx)
        return server, nginx

    yield start
    for nginx in started:
        nginx.stop()
        assert "[crit]" not in nginx.error_log() and "[alert]" not in nginx.error_log()


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "/_filestore/", "/a/b-c.d/", "/"])
def test_accel_redirect_accepts_url_path_prefixes(value: str) -> None:
    settings = load_settings(environ={"FILESTORE_SERVER__ACCEL_REDIRECT": value})
    assert settings.server.accel_redirect == value


@pytest.mark.parametrize("value", ["_filestore/", "/_filestore", "/a b/", "/%41/", "/../",
                                   "/a/./", "//x/", "http://x/", "/a?b/", "/a#b/", "/é/"])
def test_accel_redirect_refuses_what_is_not_a_plain_url_path_prefix(value: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.accel_redirect"):
        load_settings(environ={"FILESTORE_SERVER__ACCEL_REDIRECT": value})


# -- behind nginx ---------------------------------------------------------------------------------


def _put(client: httpx.Client, path: str, data: bytes, **headers: str) -> str:
    """PUT through nginx; the ETag."""
    reply = client.put(f"/files/{quote(path)}", content=data, headers=headers)
    assert reply.status_code == 201, reply.text
    return reply.headers["etag"]


def _open_fds(data_dir: Any) -> int:
    """How many of this process's fds are open on stored bytes (`files/`, `cache/`); not all
    fds: nginx's upstream connections and the metrics files, opened at the first flush, come
    and go on their own."""
    trees = (f"{data_dir}/files/", f"{data_dir}/cache/")
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(trees)
    return count


@needs_nginx
def test_local_hit_is_sent_by_nginx_with_filestores_own_headers(behind_nginx: Any) -> None:
    server, nginx = behind_nginx()
    data = os.urandom(3 * 1024 * 1024 + 17)  # over nginx's default body limit (1 MiB) too
    with nginx.client(server.token) as client, server.client(auth=False) as direct:
        etag = _put(client, "media/clip.bin", data, **{"content-type": "video/mp4"})
        before = _open_fds(server.settings.data_dir)
        for count in range(1, 21):
            reply = client.get("/files/media/clip.bin")
            assert reply.status_code == 200 and reply.content == data
            assert nginx.served("/files/media/clip.bin", count) == "nginx"
        # Every fd filestore opened to check the file is closed.
        assert _open_fds(server.settings.data_dir) == before
        plain = direct.get("/files/media/clip.bin")  # no nginx in between: filestore sends
        assert plain.content == data
        for name in ("etag", "last-modified", "content-type", "content-length", "accept-ranges",
                     "x-content-type-options"):
            assert reply.headers.get_list(name) == plain.headers.get_list(name), name
        assert reply.headers["etag"] == etag == f'"{hashlib.sha256(data).hexdigest()}"'

        # What nginx got: an empty answer naming the file, only when nginx asked for one.
        asked = direct.get("/files/media/clip.bin", headers={"x-filestore-accel": "on"})
        assert asked.status_code == 200 and asked.content == b""
        assert asked.headers["x-accel-redirect"] == "/_filestore/files/media/clip.bin"
        assert asked.headers["etag"] == etag
        # nginx never serves its internal location to a client.
        outside = client.get("/_filestore/files/media/clip.bin")
        assert outside.status_code == 404 and data not in outside.content

        # A new version is sent as soon as it is written, never from a stale descriptor.
        newer = os.urandom(1000)
        assert client.put("/files/media/clip.bin", content=newer).status_code == 200
        reply = client.get("/files/media/clip.bin")
        assert reply.content == newer
        assert reply.headers["etag"] == f'"{hashlib.sha256(newer).hexdigest()}"'
        assert nginx.served("/files/media/clip.bin", 21) == "nginx"

        # HEAD and writes stay with filestore.
        head = client.head("/files/media/clip.bin")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(newer))
        assert nginx.served("/files/media/clip.bin", method="HEAD") == "filestore"
        assert client.delete("/files/media/clip.bin").status_code == 204
        assert client.get("/files/media/clip.bin").status_code == 404


@needs_nginx
def test_every_valid_name_reaches_exactly_its_own_file(behind_nginx: Any) -> None:
    server, nginx = behind_nginx()
    # Names a wrong decoding would turn into another one, each stored next to that other one.
    names = [
        "100A", "100%41", "100%2541",   # decoded twice, %2541 -> %41 -> A
        "q", "q?x=1",                   # ? would start a query string
        "h", "h#frag",                  # # would start a fragment
        "a+b", "a b", "a%20b",          # + is not a space in a path; %20 is no space here
        "dir/semi", "dir/semi;p=1",     # ; parameters
        "ünï/cödé 漢字.txt", "ünï/x",
        "..a", "...", "..x", "%2e%2ex",   # dots nginx must not take for ".."
        "tilde~/&amp;=$'()*,:@!",
    ]
    with nginx.client(server.token) as client:
        for name in names:
            _put(client, name, f"the file {name}".encode())
        for name in names:
            reply = client.get(f"/files/{quote(name)}")
            assert reply.status_code == 200, name
            assert reply.content == f"the file {name}".encode(), name
            assert nginx.served(f"/files/{quote(name)}") == "nginx", name


def _comparable(reply: httpx.Response) -> tuple[Any, ...]:
    """Status, body and the headers a client acts on; a multipart boundary is random."""
    boundary = re.search(r"boundary=(\S+)", reply.headers.get("content-type", ""))
    body = reply.content
    headers = {name: reply.headers.get_list(name) for name in (
        "etag", "last-modified", "content-type", "content-length", "content-range",
        "accept-ranges", "x-content-type-options")}
    if boundary:
        body = body.replace(boundary.group(1).encode(), b"BOUNDARY")
        headers["content-type"] = ["multipart/byteranges; boundary=BOUNDARY"]
    if reply.status_code >= 400:
        # An error's JSON body and length are filestore's either way; nginx only passes them on.
        headers.pop("content-length")
    return reply.status_code, body, headers


@needs_nginx
def test_ranges_and_conditionals_are_answered_as_without_nginx(behind_nginx: Any) -> None:
    server, nginx = behind_nginx()
    data = os.urandom(10_000)
    with nginx.client(server.token) as client, server.client(auth=False) as direct:
        etag = _put(client, "f.bin", data)
        modified = email.utils.parsedate_to_datetime(direct.get("/files/f.bin").headers[
            "last-modified"]).timestamp()
        date = functools.partial(email.utils.formatdate, usegmt=True)
        exact, before, after = date(modified), date(modified - 86400), date(modified + 86400)
        # The file's own mtime is not filestore's Last-Modified (an import, a cache fill, a
        # restore), and the ETag nginx would make of it must mean nothing.
        mtime = int(modified) - 2 * 86400
        os.utime(server.settings.data_dir / "files/f.bin", (mtime, mtime))
        nginx_etag = f'"{mtime:x}-{len(data):x}"'
        # (request headers, how nginx's answer is made)
        cases: list[tuple[dict[str, str], str]] = [
            ({}, "nginx"),
            ({"range": "bytes=0-99"}, "nginx"),
            ({"range": "bytes=9000-"}, "nginx"),
            ({"range": "bytes=-500"}, "nginx"),
            ({"range": "bytes=-20000"}, "nginx"),
            ({"range": "bytes=9990-20000"}, "nginx"),
            ({"range": "bytes=0-0"}, "nginx"),
            ({"range": "bytes=10000-"}, "filestore"),          # 416
            ({"range": "bytes=-0"}, "filestore"),              # 416
            ({"range": "bytes=5-2"}, "filestore"),             # invalid: ignored, 200
            ({"range": "bytes=a-b"}, "filestore"),
            ({"range": "items=0-1"}, "filestore"),
            ({"range": "bytes= 0-99"}, "filestore"),
            ({"range": "bytes=0-99,"}, "filestore"),
            ({"range": "bytes=0-9,20-29"}, "filestore"),       # multipart/byteranges
            ({"range": "bytes=0-99,50-199"}, "filestore"),     # merged into one range
            ({"range": "bytes=0-99", "if-range": etag}, "nginx"),
            ({"range": "bytes=0-99", "if-range": '"other"'}, "filestore"),
            ({"range": "bytes=0-99", "if-range": f"W/{etag}"}, "filestore"),
            ({"range": "bytes=0-99", "if-range": exact}, "filestore"),
            ({"range": "bytes=0-99", "if-range": before}, "filestore"),
            ({"if-range": '"other"'}, "nginx"),
            ({"if-none-match": etag}, "filestore"),            # 304
            ({"if-none-match": f'"x", {etag}'}, "filestore"),  # 304
            ({"if-none-match": '"other"'}, "nginx"),
            ({"if-none-match": '"other"', "if-modified-since": after}, "nginx"),
            ({"if-modified-since": exact}, "filestore"),       # 304
            ({"if-modified-since": after}, "filestore"),       # 304
            ({"if-modified-since": before}, "nginx"),
            ({"if-modified-since": "not a date"}, "nginx"),
            ({"if-modified-since": date(mtime)}, "nginx"),
            ({"if-none-match": nginx_etag}, "nginx"),
            ({"range": "bytes=0-99", "if-range": date(mtime)}, "filestore"),
            ({"if-match": etag}, "filestore"),
            ({"if-match": '"other"'}, "filestore"),            # 412
            ({"if-unmodified-since": after}, "filestore"),
            ({"if-unmodified-since": before}, "filestore"),    # 412
            ({"if-none-match": '"other"', "range": "bytes=10-19"}, "nginx"),
            ({"if-modified-since": before, "range": "bytes=-1"}, "nginx"),
        ]
        for n, (headers, maker) in enumerate(cases):
            uri = f"/files/f.bin?case={n}"  # tells the access log lines apart
            through = client.get(uri, headers=headers)
            assert _comparable(through) == _comparable(direct.get(uri, headers=headers)), headers
            assert nginx.served(uri) == maker, headers


@needs_nginx
def test_auth_is_checked_by_filestore_before_any_redirect(behind_nginx: Any) -> None:
    server, nginx = behind_nginx(auth__public_read="false")
    with nginx.client(server.token) as client, nginx.client() as anonymous, \
            nginx.client("wrong") as wrong:
        _put(client, "secret.txt", b"only with the token")
        for refused in (anonymous, wrong):
            reply = refused.get("/files/secret.txt")
            assert reply.status_code == 401 and b"only with the token" not in reply.content
        assert nginx.served("/files/secret.txt", 2) == "filestore"
        reply = client.get("/files/secret.txt")
        assert reply.status_code == 200 and reply.content == b"only with the token"
        assert nginx.served("/files/secret.txt", 3) == "nginx"


def _evict(client: httpx.Client, server: LiveServer, path: str) -> None:
    """Drop a cache entry through the admin API, as an operator would."""
    assert client.post(f"/admin/api/files/{quote(path)}/evict").status_code == 200
    assert not (server.settings.data_dir / "cache" / path).exists()


@needs_nginx
def test_cache_hits_go_through_nginx_and_count_while_misses_stay_with_filestore(
        behind_nginx: Any) -> None:
    server, nginx = behind_nginx(upload__delay="0s")
    data = os.urandom(2 * 1024 * 1024)
    with nginx.client(server.token) as client:
        _put(client, "up/loaded.bin", data)
        wait_for(lambda: uploaded(server, "up/loaded.bin"))  # its bytes are a cache entry now
        before = counters(server)
        reply = client.get("/files/up/loaded.bin")
        assert reply.status_code == 200 and reply.content == data
        assert nginx.served("/files/up/loaded.bin", 1) == "nginx"
        assert nginx.log()[-1][1] == "/_filestore/cache/up/loaded.bin"
        # Statistics are written once a second.
        wait_for(lambda: counters(server).get("cache.hits", 0) == before.get("cache.hits", 0) + 1)
        assert counters(server)["cache.hit_bytes"] == before.get("cache.hit_bytes", 0) + len(data)

        _evict(client, server, "up/loaded.bin")
        reply = client.get("/files/up/loaded.bin")  # only the cloud has it: filestore reads
        assert reply.status_code == 200 and reply.content == data
        assert nginx.served("/files/up/loaded.bin", 2) == "filestore"
        wait_for(lambda: counters(server).get("cache.misses", 0)
                 == before.get("cache.misses", 0) + 1)
        # The download filled the cache: the next GET is nginx's again.
        wait_for(lambda: (server.settings.data_dir / "cache/up/loaded.bin").exists())
        reply = client.get("/files/up/loaded.bin")
        assert reply.status_code == 200 and reply.content == data
        assert nginx.served("/files/up/loaded.bin", 3) == "nginx"
        wait_for(lambda: counters(server)["cache.hits"] == before.get("cache.hits", 0) + 2)


class RedirectFault:
    """An HTTP proxy of our own between nginx and filestore: on each X-Accel-Redirect answer it
    runs `fault(target)` before nginx sees the answer, so a fault lands exactly in the window
    between filestore's answer and nginx's open of the file. `fault` may return another target
    to send on."""

    def __init__(self, upstream_port: int, fault: Callable[[str], str | None]) -> None:
        self.faults = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps nginx's upstream connections alive

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                hop = ("connection", "keep-alive", "transfer-encoding")
                conn.request("GET", self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() not in hop})
                answer = conn.getresponse()
                body = answer.read()
                conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() == "x-accel-redirect":
                        proxy.faults += 1
                        value = fault(value) or value
                    if name.lower() not in hop:
                        self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., RedirectFault]]:
    proxies: list[RedirectFault] = []

    def make(upstream_port: int, fault: Callable[[str], str | None]) -> RedirectFault:
        proxies.append(RedirectFault(upstream_port, fault))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@needs_nginx
def test_entry_evicted_before_nginx_opens_it_is_served_by_filestore(
        behind_nginx: Any, make_server: Any, fault_proxy: Any, tmp_path: Path) -> None:
    server = make_server(server__accel_redirect=PREFIX, upload__delay="0s")
    data = os.urandom(300_000)
    with server.client() as direct:
        assert direct.put("/files/hot.bin", content=data).status_code == 201
        wait_for(lambda: uploaded(server, "hot.bin"))

        def evict(target: str) -> None:
            assert target == "/_filestore/cache/hot.bin"
            _evict(direct, server, "hot.bin")

        proxy = fault_proxy(server.port, evict)
        nginx = Nginx(tmp_path / "nginx", proxy.port, server.settings.data_dir)
        try:
            with nginx.client() as client:
                reply = client.get("/files/hot.bin")
            assert reply.status_code == 200 and reply.content == data
            assert reply.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
            assert proxy.faults == 1  # the second answer, filestore's own, was no redirect
            assert nginx.served("/files/hot.bin") == "fallback"
        finally:
            nginx.stop()


@needs_nginx
def test_nginx_fallback_never_redirects_again(
        make_server: Any, fault_proxy: Any, tmp_path: Path) -> None:
    """A redirect nginx cannot follow goes back to filestore without the accel header, so
    filestore sends the bytes itself instead of redirecting in a loop."""
    server = make_server(server__accel_redirect=PREFIX)
    with server.client() as direct:
        assert direct.put("/files/a/b.txt", content=b"local bytes").status_code == 201
    proxy = fault_proxy(server.port, lambda target: target + ".gone")
    nginx = Nginx(tmp_path / "nginx", proxy.port, server.settings.data_dir)
    try:
        with nginx.client() as client:
            # What a client sends must not turn the redirect back on either.
            reply = client.get("/files/a/b.txt", headers={"x-filestore-accel": "on"})
        assert reply.status_code == 200 and reply.content == b"local bytes"
        assert proxy.faults == 1
        assert nginx.served("/files/a/b.txt") == "fallback"
    finally:
        nginx.stop()
