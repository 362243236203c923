"""Cache-Control for the caches in front (a CDN, nginx proxy_cache): a `[[plan]]` rule's
`cache_control`, else `server.cache_control`, on every answer with a file's bytes or headers
(GET, HEAD, 206, 304), through nginx's X-Accel-Redirect answers too; never on an error; and
`private, no-cache` on reads that needed a credential (the token where reads are not public, a
signed URL). Against a real uvicorn and the shipped nginx configs run by a real nginx, with an
`expires` in nginx's http block as tuning guides put there."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import test_accel
from conftest import LiveServer, free_port
from test_accel import PREFIX, Nginx, deploy_conf, needs_nginx

from filestore import plan, signing
from filestore.config import load_settings
from filestore.responses import active_type

GLOBAL = "public, max-age=3600"
MEDIA = "public, max-age=604800, stale-while-revalidate=60"
PRIVATE = "private, no-cache"
CONFIG = f"""\
[server]
cache_control = "{GLOBAL}"

[[plan]]
prefix = "media/"
cache_control = "{MEDIA}"

[[plan]]
prefix = "live/"
cache_control = ""              # none for these, whatever the global one says

[[plan]]
prefix = "faxes/"
upload = false                  # no cache_control of its own: the global one
"""
# path -> the Cache-Control its answers carry (None: none)
FILES = {
    "media/clip.bin": MEDIA,
    "docs/a.txt": GLOBAL,      # no rule matches
    "faxes/f.pdf": GLOBAL,     # a rule without cache_control
    "live/feed.json": None,    # a rule's "" overrides the global one
}
BODY = bytes(range(256)) * 8


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "filestore.toml"
    path.write_text(text)
    return path


def _every_answer(client: httpx.Client, target: str) -> Iterator[httpx.Response]:
    """GET, HEAD, a 206 of one range and of two, a 304 by ETag and by date, GET and HEAD."""
    whole = client.get(target)
    assert whole.status_code == 200, whole.text
    yield whole
    head = client.head(target)
    assert head.status_code == 200
    yield head
    for ranges in ("bytes=0-99", "bytes=0-9,20-29"):
        partial = client.get(target, headers={"range": ranges})
        assert partial.status_code == 206
        yield partial
    for condition in ({"if-none-match": whole.headers["etag"]},
                      {"if-modified-since": whole.headers["last-modified"]}):
        for method in ("GET", "HEAD"):
            unchanged = client.request(method, target, headers=condition)
            assert unchanged.status_code == 304
            yield unchanged


def _cache_control(reply: httpx.Response) -> list[str]:
    return reply.headers.get_list("cache-control")


def _expected(value: str | None) -> list[str]:
    return [value] if value else []


def _put_files(client: httpx.Client) -> None:
    for path in FILES:
        assert client.put(f"/files/{path}", content=BODY).status_code == 201


def _no_cache_control_on_errors(client: httpx.Client, path: str) -> None:
    """Errors are about the request, not the file: nothing for a cache to keep."""
    etag = client.get(f"/files/{path}").headers["etag"]
    for reply in (client.get("/files/media/missing.bin"),                       # 404
                  client.get(f"/files/{path}", headers={"range": "bytes=9999-"}),  # 416
                  client.get(f"/files/{path}", headers={"if-match": '"other"'}),   # 412
                  client.get(f"/files/{path}?expires=1&sig=00")):                 # 403
        assert reply.status_code >= 400 and _cache_control(reply) == [], reply.status_code
    assert client.get(f"/files/{path}", headers={"if-match": etag}).status_code == 200


# -- the plan ---------------------------------------------------------------------------------


def test_route_carries_the_rules_cache_control_else_the_global_one(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path))
    for path, expected in FILES.items():
        assert plan.route(settings, path, "application/octet-stream").cache_control == (
            expected or ""), path
    assert plan.route(load_settings(environ={}), "media/a.jpg", "image/jpeg").cache_control == ""
    assert f'cache_control = "{MEDIA}"' in plan.describe(settings.plan[0])
    assert plan.describe(settings.plan[1]).endswith('cache_control = ""')
    assert "cache_control" not in plan.describe(settings.plan[2])


def test_what_a_get_pays_for_says_what_route_says(tmp_path: Path) -> None:
    """`plan.served` (precomputed per content type, for the hot path) against `plan.route`
    over overlapping prefixes, type globs, inline rules and rules that match every file."""
    config = f"""\
[server]
cache_control = "{GLOBAL}"
[[plan]]
prefix = "b/"
upload = false
[[plan]]
prefix = "d/"
upload = false
[[plan]]
prefix = "a/b/"
content_type = "image/*"
cache_control = "one"
[[plan]]
prefix = "a/"
inline = true
[[plan]]
content_type = "text/html"
cache_control = "two"
inline = true
[[plan]]
prefix = "a/b/c/"
cache_control = "three"
[[plan]]
prefix = "b/c/"
cache_control = "five"
[[plan]]
content_type = "application/*"
cache_control = "{GLOBAL}"
[[plan]]
cache_control = "four"
[[plan]]
prefix = "never/"
cache_control = "never reached"
"""
    without_every = config.rsplit("[[plan]]\ncache_control = \"four\"", 1)[0]
    for text in (config, without_every, ""):
        settings = load_settings(_config(tmp_path, text))
        paths = ["a/b/c/x", "a/b/x", "a/x", "b/x", "b/c/x", "d/x", "never/x", "", "A/b/x"]
        types = ["image/png", "IMAGE/PNG; q=1", "text/html", "text/html; charset=utf-8",
                 "application/json", "image/svg+xml", "text/plain", "bogus"]
        for _, path, content_type in itertools.product(range(2), paths, types):  # twice: cached
            route = plan.route(settings, path, content_type)
            attach = active_type(content_type) and not route.inline
            assert plan.served(settings, path, content_type) == (route.cache_control, attach), (
                text[:20], path, content_type)
    # What a GET of a text file tries without the rule for every file: "b/" hides "b/c/" and
    # "a/" hides "a/b/c/" from some paths, "d/" hides nothing.
    rules, _ = plan.Serving(load_settings(_config(tmp_path, without_every))).for_type(
        "text/plain")
    assert [prefix for prefix, _ in rules] == ["b/", "a/", "a/b/c/", "b/c/"]


# -- the answers ------------------------------------------------------------------------------


def test_every_answer_carries_its_rules_cache_control_else_the_global_one(
        make_server: Any, tmp_path: Path) -> None:
    server = make_server(config=_config(tmp_path))
    with server.client() as client:
        _put_files(client)
        for path, expected in FILES.items():
            for reply in _every_answer(client, f"/files/{path}"):
                assert _cache_control(reply) == _expected(expected), (path, reply.status_code)
                assert "expires" not in reply.headers
        _no_cache_control_on_errors(client, "media/clip.bin")


def test_without_a_policy_no_answer_has_one(server: LiveServer) -> None:
    with server.client() as client:
        assert client.put("/files/media/a.jpg", content=BODY).status_code == 201
        for reply in _every_answer(client, "/files/media/a.jpg"):
            assert _cache_control(reply) == []
    route = plan.route(server.settings, "media/a.jpg", "image/jpeg")
    assert route.cache_control == "" and plan.served(server.settings, "media/a.jpg",
                                                     "image/jpeg") == ("", False)


def _signed(server: LiveServer, path: str, **options: Any) -> str:
    url = signing.SigningKey(server.settings.data_dir).sign(
        "GET", path, int(time.time()) + 600, **options)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_reads_that_need_the_token_are_private(make_server: Any, tmp_path: Path) -> None:
    server = make_server(config=_config(tmp_path), auth__public_read="false")
    with server.client() as owner, server.client(auth=False) as anonymous:
        _put_files(owner)
        for path in FILES:  # whatever the plan says, "live/" without a policy too
            for reply in _every_answer(owner, f"/files/{path}"):
                assert _cache_control(reply) == [PRIVATE], (path, reply.status_code)
            for reply in _every_answer(anonymous, _signed(server, path)):
                assert _cache_control(reply) == [PRIVATE], (path, reply.status_code)
        refused = anonymous.get("/files/media/clip.bin")
        assert refused.status_code == 401 and _cache_control(refused) == []


def test_signed_urls_are_private_where_reads_are_public(make_server: Any, tmp_path: Path) -> None:
    """A shared cache keeping a signed URL's answer would serve it after the URL expired, and
    a single-use URL's more than once."""
    server = make_server(config=_config(tmp_path))
    with server.client() as owner, server.client(auth=False) as anonymous:
        _put_files(owner)
        for reply in _every_answer(anonymous, _signed(server, "media/clip.bin")):
            assert _cache_control(reply) == [PRIVATE], reply.status_code
        once = anonymous.get(_signed(server, "media/clip.bin", once=True))
        assert once.status_code == 200 and _cache_control(once) == [PRIVATE]
        # The same file without the signature: the plan's policy.
        assert _cache_control(anonymous.get("/files/media/clip.bin")) == [MEDIA]
        assert _cache_control(anonymous.get("/files/media/clip.bin?v=2")) == [MEDIA]


# -- behind nginx ------------------------------------------------------------------------------

# As tuning guides have it for static files: the shipped configs must turn it off themselves,
# or nginx replaces the Cache-Control of every answer with its own.
EXPIRES = "expires 7d;"
ADMIN_CONF = Path(__file__).parent.parent / "deploy" / "nginx-admin.conf"


@pytest.fixture
def nginx_with_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_accel, "MAIN_CONF",
                        test_accel.MAIN_CONF.replace("http {{\n", f"http {{{{\n  {EXPIRES}\n"))
    assert EXPIRES in test_accel.MAIN_CONF


@pytest.fixture
def started() -> Iterator[list[Nginx]]:
    running: list[Nginx] = []
    yield running
    for nginx in running:
        nginx.stop()
        assert "[crit]" not in nginx.error_log() and "[alert]" not in nginx.error_log()


def _comparable(reply: httpx.Response) -> tuple[Any, ...]:
    multipart = reply.headers.get("content-type", "").startswith("multipart/")  # its boundary
    return (reply.status_code, None if multipart else reply.content,
            reply.headers.get_list("cache-control"), reply.headers.get_list("expires"),
            reply.headers.get_list("etag"))


@needs_nginx
@pytest.mark.usefixtures("nginx_with_expires")
def test_through_nginx_every_answer_carries_filestores_cache_control(
        make_server: Any, started: list[Nginx], tmp_path: Path) -> None:
    server = make_server(config=_config(tmp_path), server__accel_redirect=PREFIX)
    nginx = Nginx(tmp_path / "nginx", server.port, server.settings.data_dir)
    started.append(nginx)
    with nginx.client(server.token) as client, server.client(auth=False) as direct:
        _put_files(client)
        for path, expected in FILES.items():
            uri = f"/files/{path}"
            for n, (reply, plain) in enumerate(zip(_every_answer(client, uri),
                                                   _every_answer(direct, uri), strict=True)):
                assert _cache_control(reply) == _expected(expected), (path, n)
                assert "expires" not in reply.headers, (path, n)
                assert _comparable(reply) == _comparable(plain), (path, n)
            # The whole GET and the one range were nginx's to send (X-Accel-Redirect).
            assert nginx.served(uri, 1) == "nginx" and nginx.served(uri, 2) == "nginx"
        _no_cache_control_on_errors(client, "media/clip.bin")


@needs_nginx
@pytest.mark.usefixtures("nginx_with_expires")
def test_through_nginx_private_reads_stay_private(
        make_server: Any, started: list[Nginx], tmp_path: Path) -> None:
    server = make_server(config=_config(tmp_path), server__accel_redirect=PREFIX,
                         auth__public_read="false")
    nginx = Nginx(tmp_path / "nginx", server.port, server.settings.data_dir)
    started.append(nginx)
    with nginx.client(server.token) as owner, nginx.client() as anonymous:
        _put_files(owner)
        signed = _signed(server, "media/clip.bin")
        for client, target in ((owner, "/files/media/clip.bin"), (anonymous, signed)):
            for reply in _every_answer(client, target):
                assert _cache_control(reply) == [PRIVATE], (target, reply.status_code)
                assert "expires" not in reply.headers
        assert nginx.served("/files/media/clip.bin") == "nginx"
        assert nginx.served(signed) == "nginx"


@needs_nginx
@pytest.mark.usefixtures("nginx_with_expires")
def test_behind_nginx_admin_pages_stay_no_store(
        make_server: Any, started: list[Nginx], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin pages hold the CSRF token: an http block's `expires` must not make them
    cacheable through deploy/nginx-admin.conf."""
    server = make_server()
    admin_port = free_port()
    admin = ADMIN_CONF.read_text()
    for old, new in (("listen 8443;", f"listen 127.0.0.1:{admin_port};"),
                     ("server 127.0.0.1:8081;", f"server 127.0.0.1:{server.port};")):
        assert admin.count(old) == 1, f"deploy/nginx-admin.conf no longer has {old!r}"
        admin = admin.replace(old, new)
    monkeypatch.setattr(test_accel, "deploy_conf",
                        lambda *args: deploy_conf(*args) + "\n" + admin)
    started.append(Nginx(tmp_path / "nginx", server.port, server.settings.data_dir))
    # nginx binds every listener before it answers on any: the admin port is up too.
    page = httpx.get(f"http://127.0.0.1:{admin_port}/admin/login")
    assert page.status_code == 200 and "<form" in page.text
    assert _cache_control(page) == ["no-store"] and "expires" not in page.headers
