"""The type a PUT stores when the client named none that means anything: curl's `--data-binary`
(the README's walk-through) sends `application/x-www-form-urlencoded` unless told otherwise, so
that type on a name with a known extension is replaced by the name's type. Sent with a real curl
to a real uvicorn."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import LiveServer, file_row

from filestore import signing

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300) + b"\xff\xd9"
FORM = "application/x-www-form-urlencoded"


def _curl_put(server: LiveServer, path: str, body: Path, *headers: str) -> str:
    """`curl -X PUT --data-binary @body` as the README has it; what curl said it sent."""
    assert CURL is not None
    args = [CURL, "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
            "-H", f"Authorization: Bearer {server.token}", "--data-binary", f"@{body}"]
    for header in headers:
        args += ["-H", header]
    done = subprocess.run([*args, f"{server.url}/files/{path}"], capture_output=True,
                          text=True, timeout=30, check=True)
    assert done.stdout == "201", (done.stdout, done.stderr)
    return "\n".join(line[2:] for line in done.stderr.splitlines() if line.startswith("> "))


def _served_type(server: LiveServer, path: str) -> str:
    with server.client(auth=False) as client:
        reply = client.get(f"/files/{path}")
    assert reply.status_code == 200
    row = file_row(server, path)
    assert row is not None and row["content_type"] == reply.headers["content-type"]
    return reply.headers["content-type"]


@needs_curl
def test_the_readmes_curl_put_of_a_jpeg_stores_image_jpeg(server: LiveServer,
                                                          tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    sent = _curl_put(server, "media/photo.jpg", photo)
    assert f"Content-Type: {FORM}" in sent  # curl's default, which the README did not override
    assert _served_type(server, "media/photo.jpg") == "image/jpeg"
    with server.client() as client:
        listed = client.get("/files/", params={"prefix": "media/"}).json()["items"]
        assert [item["content_type"] for item in listed] == ["image/jpeg"]
        whole = client.get("/files/media/photo.jpg")
        assert whole.content == JPEG and "content-disposition" not in whole.headers


@needs_curl
def test_a_form_type_gives_way_to_the_names_type_and_stays_without_one(
        server: LiveServer, tmp_path: Path) -> None:
    """curl's default and an explicit `-H 'Content-Type: application/x-www-form-urlencoded'`
    are the same bytes on the wire: both are replaced when the name has a known extension,
    and kept when it has none."""
    body = tmp_path / "body"
    body.write_bytes(JPEG)
    cases: list[tuple[str, tuple[str, ...], str]] = [
        ("a/explicit.jpg", (f"Content-Type: {FORM}",), "image/jpeg"),
        ("a/params.png", ("Content-Type: Application/X-WWW-Form-UrlEncoded; charset=UTF-8",),
         "image/png"),
        ("a/report.pdf", (), "application/pdf"),
        ("a/page.html", (), "text/html"),
        # No known extension: the type sent is all there is to go on.
        ("a/no-extension", (), FORM),
        ("a/name.unknownext42", (f"Content-Type: {FORM}",), FORM),
        ("a/form.unknownext43", (f"Content-Type: {FORM}; charset=UTF-8",),
         f"{FORM}; charset=UTF-8"),
        # Any other type named is the client's word, as ever.
        ("a/typed.jpg", ("Content-Type: text/plain",), "text/plain"),
        ("a/none.jpg", ("Content-Type:",), "image/jpeg"),  # curl then sends no Content-Type
    ]
    for path, headers, expected in cases:
        _curl_put(server, path, body, *headers)
        assert _served_type(server, path) == expected, path
    # An HTML page sent as a form is HTML, so it is an attachment (docs/http.md "Served inert").
    with server.client(auth=False) as client:
        page = client.get("/files/a/page.html")
        assert page.headers["content-disposition"] == 'attachment; filename="page.html"'


def test_a_signed_put_bound_to_the_form_type_still_checks_what_was_sent(
        server: LiveServer) -> None:
    """The signed URL binds the type the client sends (checked before any replacement); the
    stored type is then the name's, as for any PUT."""
    url = signing.SigningKey(server.settings.data_dir).sign(
        "PUT", "up/scan.jpg", int(time.time()) + 600, content_type=FORM)
    target = "{0.path}?{0.query}".format(urlsplit(url))
    with server.client(auth=False) as client:
        refused = client.put(target, content=JPEG, headers={"content-type": "image/jpeg"})
        assert refused.status_code == 403
        stored = client.put(target, content=JPEG, headers={"content-type": FORM})
        assert stored.status_code == 201, stored.text
    assert _served_type(server, "up/scan.jpg") == "image/jpeg"

