"""Path validation: `filestore.paths` unit tests, hostile request-targets through the real server
(sent verbatim with `raw_request`, so no client normalises them first), symlinks inside the data
directory that lead outside it, and legitimate odd names end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from conftest import LiveServer, raw_request

from filestore.errors import BadPath
from filestore.paths import (
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    normalize,
    normalize_prefix,
    resolve_below,
)

SECRET = b"root:x:0:0:the secret outside the data directory\n"


# --------------------------------------------------------------------------------------------
# normalize: the argument is the path as the server hands it over, already decoded once.
# --------------------------------------------------------------------------------------------

VALID = [
    "a",
    "a/b/c.txt",
    "with space.txt",
    "é/日本.txt",
    "100%.txt",
    "%41",  # a literal name; decoding it again must not change what is stored
    "a%2fb",  # a literal name, not the two segments a/b
    "...",
    "..a",
    "a..",
    ".hidden",
    "a.b.c",
    "semi;colon,comma=eq&amp+plus~tilde'quote\"",
    "emoji😀.bin",
    "．．",  # fullwidth full stops: an ordinary name, not ".."
    "x" * MAX_SEGMENT_BYTES,
    "日" * (MAX_SEGMENT_BYTES // 3),  # 255 bytes in 85 characters
    "/".join(["y" * 204] * 5),  # exactly 1024 bytes
]


def _short(value: str) -> str:
    """A readable test id for a long or unprintable path."""
    text = value.encode("unicode_escape", "surrogatepass").decode("ascii")
    size = len(value.encode("utf-8", "surrogatepass"))
    return text if len(text) <= 40 else f"{text[:24]}..({size}B)"


@pytest.mark.parametrize("path", VALID, ids=_short)
def test_normalize_accepts_and_keeps_valid_paths(path):
    assert len(path.encode()) <= MAX_PATH_BYTES
    assert normalize(path) == path
    assert normalize(normalize(path)) == path


def test_normalize_returns_nfc():
    assert normalize("cafe\u0301/x") == "caf\u00e9/x"
    assert normalize("caf\u00e9/x") == "caf\u00e9/x"


def test_normalize_does_not_decode_what_it_returns():
    # `%41` is checked in its decoded form too, but the name stays the literal three characters.
    assert normalize("%41") == "%41"
    assert normalize("a%20b") == "a%20b"


INVALID = [
    "",
    "/",
    "//",
    "/etc/passwd",
    "//etc/passwd",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "a/..",
    "a/../b",
    "a/../../b",
    "./a",
    "a/.",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..\\x",
    "\\etc\\passwd",
    "a\x00b",
    "\x00",
    "a\x01b",
    "a\x1bb",
    "a\x7fb",
    "a\nb",
    "a\n",
    "a\rb",
    "a\tb",
    "a\x85b",  # NEL, a C1 control
    "a\ud800b",  # a lone surrogate
    "a\ufffdb",  # what a lenient decoder makes of invalid UTF-8
    # invisible: a name that shows as another ("invoice<RLO>fdp.exe" reads "invoiceexe.pdf")
    "invoice\u202efdp.exe",
    "a\u2066b\u2069",  # bidi isolates
    "a\u200eb",  # LEFT-TO-RIGHT MARK
    "pay\u200bpal.html",  # zero-width space
    "\ufeffa",  # BOM / zero-width no-break space
    "a\u2060b",  # word joiner
    "a%E2%80%AEb",  # RLO, percent-encoded once more
    # one more round of percent-encoding
    "%2e%2e/x",
    "%2E%2E/x",
    "%2e./x",
    ".%2e/x",
    "..%2fx",
    "a%2f..%2f..%2fb",
    "%2e%2e%5cx",
    "a%5cb",
    "%2fetc%2fpasswd",
    "a%2f%2fb",
    "a%2f",
    "%2e",
    "a%00b",
    "a%01b",
    "a%7fb",
    "a%0ab",
    "%ff",
    "a%ffb",
    "%c0%ae%c0%ae/x",
    "%c0%af",
    "%e0%80%ae",
    "%ed%a0%80",
    # two and three more rounds
    "%252e%252e/x",
    "%25252e%25252e/x",
    "..%252fx",
    "a%2500b",
    "%25ff",
    "%25c0%25ae%25c0%25ae/x",
    # four more rounds: refused as too many, whatever it hides
    "%2525252e%2525252e/x",
    "%2525252541",
    # sizes
    "x" * (MAX_SEGMENT_BYTES + 1),
    "日" * (MAX_SEGMENT_BYTES // 3 + 1),  # 258 bytes in 86 characters
    "a/" + "x" * (MAX_SEGMENT_BYTES + 1) + "/b",
    "/".join(["y" * 204] * 5) + "y",  # 1025 bytes
    "/".join(["y" * 200] * 6),  # every segment fine, the whole too long
]


@pytest.mark.parametrize("path", INVALID, ids=_short)
def test_normalize_rejects(path):
    with pytest.raises(BadPath) as info:
        normalize(path)
    assert info.value.code == "bad_path" and info.value.status == 400
    assert info.value.detail


@pytest.mark.parametrize("path", [
    pytest.param("\U0001d160" * (MAX_SEGMENT_BYTES // 4), id="segment-252B-nfc-756B"),
    pytest.param("/".join(["\u0958" * 85] * 4), id="path-1023B-nfc-2043B"),
])
def test_normalize_result_respects_length_limits(path):
    try:
        result = normalize(path)
    except BadPath:
        return
    assert len(result.encode()) <= MAX_PATH_BYTES
    assert max(len(seg.encode()) for seg in result.split("/")) <= MAX_SEGMENT_BYTES


# --------------------------------------------------------------------------------------------
# normalize_prefix
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("", ""),
    ("a", "a"),
    ("ph", "ph"),
    ("a/", "a/"),
    ("a/b/", "a/b/"),
    ("a/b", "a/b"),
    ("cafe\u0301/", "caf\u00e9/"),
    ("100%", "100%"),
])
def test_normalize_prefix_accepts(raw, expected):
    assert normalize_prefix(raw) == expected


@pytest.mark.parametrize("raw", [
    "/", "//", "/a", "/a/", "a//", "a//b", ".", "./", "..", "../", "a/../", "a/./", "../a",
    "a\x00", "a\\", "%2e%2e/", "a\n/", "x" * (MAX_SEGMENT_BYTES + 1) + "/",
])
def test_normalize_prefix_rejects(raw):
    with pytest.raises(BadPath):
        normalize_prefix(raw)


# --------------------------------------------------------------------------------------------
# resolve_below
# --------------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return root.resolve(), outside.resolve()


def test_resolve_below_plain_paths(tree):
    root, _ = tree
    assert resolve_below(root, "a") == root / "a"
    assert resolve_below(root, "a/b/c.txt") == root / "a" / "b" / "c.txt"
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    assert resolve_below(root, "d/f") == root / "d" / "f"


@pytest.mark.parametrize("make_link", [
    pytest.param(lambda root, out: (root / "link").symlink_to(out), id="dir-absolute"),
    pytest.param(lambda root, out: (root / "link").symlink_to(Path("..") / "outside"),
                 id="dir-relative"),
    pytest.param(lambda root, out: (root / "link").symlink_to(root.parent), id="to-parent"),
    pytest.param(lambda root, out: (root / "link").symlink_to(Path(str(root) + "-evil")),
                 id="sibling-with-same-prefix"),
])
def test_resolve_below_refuses_a_directory_symlink_leading_outside(tree, make_link):
    root, outside = tree
    Path(str(root) + "-evil").mkdir()
    make_link(root, outside)
    for path in ("link/secret.txt", "link/new.txt", "link/sub/new.txt", "link"):
        with pytest.raises(BadPath):
            resolve_below(root, path)


def test_resolve_below_refuses_file_and_dangling_symlinks_leading_outside(tree):
    root, outside = tree
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "dangling").symlink_to(outside / "does-not-exist-yet")
    (root / "sub").mkdir()
    (root / "sub" / "leak").symlink_to(Path("..") / ".." / "outside" / "secret.txt")
    for path in ("leak.txt", "dangling", "sub/leak"):
        with pytest.raises(BadPath):
            resolve_below(root, path)
    assert not (outside / "does-not-exist-yet").exists()


def test_resolve_below_refuses_a_chain_of_symlinks_ending_outside(tree):
    root, outside = tree
    (root / "hop2").symlink_to(outside)
    (root / "hop1").symlink_to(root / "hop2")
    with pytest.raises(BadPath):
        resolve_below(root, "hop1/secret.txt")


def test_resolve_below_allows_a_symlink_that_stays_inside(tree):
    root, _ = tree
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    assert resolve_below(root, "alias/x") == root / "alias" / "x"


def test_resolve_below_survives_a_symlink_loop(tree):
    root, _ = tree
    (root / "loop").symlink_to("loop")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    for path in ("loop", "loop/x", "ping/x"):
        try:
            result = resolve_below(root, path)
        except BadPath:
            continue
        assert str(result).startswith(str(root) + os.sep)


# --------------------------------------------------------------------------------------------
# Hostile request-targets through the real server
# --------------------------------------------------------------------------------------------

LONG_SEGMENT = "a" * (MAX_SEGMENT_BYTES + 1)

# (request-target after "/files/", id); every one must be refused with 400 bad_path.
HOSTILE: list[Any] = [
    ("../etc/passwd", "dotdot"),
    ("../../etc/passwd", "dotdot-twice"),
    ("a/../../etc/passwd", "dotdot-after-segment"),
    ("..", "dotdot-alone"),
    ("a/..", "dotdot-trailing"),
    ("%2e%2e/etc/passwd", "pct-dotdot"),
    ("%2E%2E/etc/passwd", "pct-dotdot-upper"),
    ("%2e%2E/%2E%2e/etc/passwd", "pct-dotdot-mixed-case"),
    ("%2e./etc/passwd", "half-encoded-1"),
    (".%2e/etc/passwd", "half-encoded-2"),
    ("%252e%252e/etc/passwd", "double-encoded-dotdot"),
    ("%25252e%25252e/etc/passwd", "triple-encoded-dotdot"),
    ("%2525252e%2525252e/etc/passwd", "quintuple-encoded-dotdot"),
    ("..%2fetc%2fpasswd", "dotdot-encoded-slash"),
    ("..%2f..%2fetc%2fpasswd", "dotdot-encoded-slash-twice"),
    ("a%2f..%2f..%2fetc%2fpasswd", "encoded-slash-traversal"),
    ("..%252f..%252fetc%252fpasswd", "double-encoded-slash"),
    ("%2e%2e%5cetc%5cpasswd", "pct-dotdot-backslash"),
    ("%2e%2e%255cetc%255cpasswd", "double-encoded-backslash"),
    ("..\\..\\etc\\passwd", "raw-backslash-traversal"),
    ("a\\b", "raw-backslash"),
    ("a%5cb", "pct-backslash"),
    ("/etc/passwd", "absolute"),
    ("%2fetc%2fpasswd", "absolute-encoded"),
    ("%252fetc%252fpasswd", "absolute-double-encoded"),
    ("a%00b", "nul"),
    ("a%00", "nul-trailing"),
    ("%00", "nul-alone"),
    ("a%2500b", "nul-double-encoded"),
    ("a%01b", "ctrl-01"),
    ("a%1bb", "ctrl-esc"),
    ("a%7fb", "ctrl-del"),
    ("a%09b", "ctrl-tab"),
    ("a%0db", "ctrl-cr"),
    ("a%c2%85b", "ctrl-c1-nel"),
    ("a%250ab", "newline-double-encoded"),
    pytest.param("a%0ab", id="ctrl-lf-middle"),
    pytest.param("a%0d%0aX-Injected:%201", id="ctrl-crlf-injection"),
    pytest.param("a%0a", id="ctrl-lf-trailing"),
    ("a//b", "empty-segment"),
    ("a%2f%2fb", "empty-segment-encoded"),
    ("a/", "trailing-slash"),
    ("a%2f", "trailing-slash-encoded"),
    (".", "dot-alone"),
    ("%2e", "dot-encoded"),
    ("./a", "dot-leading"),
    ("a/./b", "dot-middle"),
    ("a/.", "dot-trailing"),
    ("a" * (MAX_PATH_BYTES + 1), "over-1024-bytes"),
    ("/".join(["b" * 200] * 6), "over-1024-bytes-in-valid-segments"),
    ("%e6%97%a5" * 342, "over-1024-bytes-multibyte"),
    (LONG_SEGMENT, "segment-256-bytes"),
    ("ok/" + LONG_SEGMENT + "/ok", "segment-256-bytes-inside"),
    ("%e6%97%a5" * 86, "segment-258-bytes-multibyte"),
    ("%ff", "invalid-utf8"),
    ("a%ffb", "invalid-utf8-inside"),
    ("%25ff", "invalid-utf8-double-encoded"),
    ("%c0%ae%c0%ae/etc/passwd", "overlong-utf8-dotdot"),
    ("%25c0%25ae%25c0%25ae/etc/passwd", "overlong-utf8-double-encoded"),
    ("%c0%af", "overlong-utf8-slash"),
    ("%e0%80%ae%e0%80%ae/x", "overlong-utf8-3byte-dot"),
    ("%ed%a0%80", "utf8-encoded-surrogate"),
    ("%f4%90%80%80", "utf8-beyond-unicode"),
    ("a b", "raw-space"),  # not a valid request line: the HTTP parser may refuse it
    ("a\tb", "raw-tab"),
    ("\xff\xfe", "raw-non-ascii"),
]


def _params(cases: list[Any]) -> list[Any]:
    out = []
    for case in cases:
        if type(case) is tuple:  # a pytest.param is a tuple subclass: keep it as it is
            out.append(pytest.param(case[0], id=case[1]))
        else:
            out.append(case)
    return out


# Bytes that RFC 9112 does not allow in a request-target: the HTTP parser may refuse these itself.
_NOT_IN_A_REQUEST_TARGET = set(" \t\"<>\\^`{|}") | {chr(c) for c in range(0x20)} | {
    chr(c) for c in range(0x7F, 0x100)}


def _snapshot(base: Path) -> dict[str, bytes | str]:
    """Every file and symlink below `base` (except SQLite's own files and the request metrics,
    which every request moves) with a hash of its bytes."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(base))
            if name.startswith("registry.sqlite3") or Path(dirpath).name == "metrics":
                continue
            if full.is_symlink():
                out[rel] = "-> " + os.readlink(full)
            elif full.is_file():
                out[rel] = hashlib.sha256(full.read_bytes()).digest()
            else:
                out[rel] = "dir"
    return out


class Hostile:
    def __init__(self, base: Path, server: LiveServer) -> None:
        self.base = base
        self.server = server
        self.client = server.client()  # one client: making one costs ~50 ms (SSL context)


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    base = tmp_path_factory.mktemp("hostile")
    data = base / "data"
    # Canaries where a `..` or two from data/files would land.
    for canary in (base / "etc" / "passwd", data / "etc" / "passwd", data / "passwd"):
        canary.parent.mkdir(parents=True, exist_ok=True)
        canary.write_bytes(SECRET)
    env = Hostile(base, LiveServer(data))
    yield env
    env.client.close()
    env.server.stop()


@pytest.fixture
def hostile(hostile_env: Hostile) -> Iterator[Hostile]:
    yield hostile_env
    # If a request did get through (a bug), put the registry back so later cases start clean.
    c = hostile_env.client
    for item in c.get("/files/", params={"limit": "1000"}).json()["items"]:
        c.delete("/files/" + quote(item["path"], safe="/"))


def _assert_refused(target: str, status: int, body: bytes) -> None:
    assert status == 400, (status, body[:300])
    if any(ch in _NOT_IN_A_REQUEST_TARGET for ch in target) and not body.startswith(b"{"):
        return  # uvicorn's own "Invalid HTTP request received."
    assert json.loads(body)["error"] == "bad_path", body[:300]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
@pytest.mark.parametrize("target", _params(HOSTILE))
def test_hostile_path_is_refused(hostile, tracebacks, target, method):
    server = hostile.server
    before = _snapshot(hostile.base)
    headers = {}
    if method in ("PUT", "DELETE"):
        headers = {"Authorization": f"Bearer {server.token}", "Content-Length": "0"}
    status, body = raw_request(server, "/files/" + target, method, headers)
    tracebacks.settle(status)
    if method == "HEAD":
        assert status == 400, status  # no body to look at
    else:
        _assert_refused(target, status, body)
    assert SECRET not in body
    assert _snapshot(hostile.base) == before  # nothing created, changed or removed anywhere
    assert hostile.client.get("/files/").json()["items"] == []


def test_trailing_newline_does_not_alias_another_path(hostile, tracebacks):
    server, c = hostile.server, hostile.client
    assert c.put("/files/victim", content=b"keep me").status_code == 201
    auth = {"Authorization": f"Bearer {server.token}", "Content-Length": "0"}
    results = {
        "GET": raw_request(server, "/files/victim%0a")[0],
        "PUT": raw_request(server, "/files/victim%0a", "PUT", auth)[0],
        "DELETE": raw_request(server, "/files/victim%0a", "DELETE", auth)[0],
    }
    # Today: GET 200 (the victim's bytes), PUT 200 (the victim emptied), DELETE 204 (gone).
    assert results == {"GET": 400, "PUT": 400, "DELETE": 400}
    assert c.get("/files/victim").content == b"keep me"


@pytest.mark.parametrize("target", [
    "http://127.0.0.1/files/../etc/passwd",  # absolute-form request-target
    "http://127.0.0.1/files/%2e%2e/etc/passwd",
])
def test_hostile_absolute_form_target(hostile, tracebacks, target):
    server = hostile.server
    before = _snapshot(hostile.base)
    auth = {"Authorization": f"Bearer {server.token}", "Content-Length": "0"}
    for method, headers in (("GET", {}), ("PUT", auth)):
        status, body = raw_request(server, target, method, headers)
        tracebacks.settle(status)
        _assert_refused(target, status, body)
    assert _snapshot(hostile.base) == before


def test_put_to_the_empty_path_is_refused(hostile):
    server = hostile.server
    status, body = raw_request(server, "/files/", "PUT", {
        "Authorization": f"Bearer {server.token}", "Content-Length": "0"})
    assert status == 400 and json.loads(body)["error"] == "bad_path"


def test_put_of_a_name_that_grows_under_nfc_is_not_a_500(hostile, tracebacks):
    server = hostile.server
    name = "\U0001d160" * (MAX_SEGMENT_BYTES // 4)
    status, body = raw_request(server, "/files/" + quote(name), "PUT", {
        "Authorization": f"Bearer {server.token}", "Content-Length": "0"})
    tracebacks.settle(status)
    assert status == 400, (status, body)
    assert json.loads(body)["error"] == "bad_path"


# --------------------------------------------------------------------------------------------
# Symlinks inside data_dir/files that lead outside it
# --------------------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_bytes(SECRET)
    return out


def _put_raw(server: LiveServer, target: str) -> tuple[int, bytes]:
    return raw_request(server, target, "PUT", {
        "Authorization": f"Bearer {server.token}", "Content-Length": "0"})


def test_symlinked_directory_leading_outside(server, outside):
    root = server.store.local.root
    (root / "link").symlink_to(outside)
    before = _snapshot(outside)
    with server.client() as c:
        for path in ("link/secret.txt", "link/new.txt", "link/sub/new.txt", "link"):
            r = c.put(f"/files/{path}", content=b"overwritten")
            assert r.status_code == 400 and r.json()["error"] == "bad_path", (path, r.text)
            # Not registered, so GET answers 404 before it looks at the disk; either way the
            # secret must not come back.
            r = c.get(f"/files/{path}")
            assert r.status_code in (400, 404), (path, r.status_code)
            assert SECRET not in r.content
        assert c.get("/files/").json()["items"] == []
    assert _snapshot(outside) == before


def test_symlinked_file_leading_outside(server, outside):
    root = server.store.local.root
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "dangling.txt").symlink_to(outside / "created-through-symlink.txt")
    before = _snapshot(outside)
    with server.client() as c:
        for path in ("leak.txt", "dangling.txt"):
            r = c.put(f"/files/{path}", content=b"overwritten")
            assert r.status_code == 400 and r.json()["error"] == "bad_path", (path, r.text)
            r = c.get(f"/files/{path}")
            assert r.status_code in (400, 404) and SECRET not in r.content
    assert _snapshot(outside) == before
    assert (root / "leak.txt").is_symlink()


def test_registered_file_whose_directory_became_a_symlink(server, outside):
    """The path is in the registry, so GET reaches the disk: the symlink must be refused.

    The registered body is as long as the secret, so a size check alone would not tell them
    apart: only the path check stands between the client and the secret."""
    root = server.store.local.root
    with server.client() as c:
        real = b"R" * len(SECRET)
        assert c.put("/files/d/secret.txt", content=real).status_code == 201
        (root / "d").rename(root / "d-moved")
        (root / "d").symlink_to(outside)
        before = _snapshot(outside)

        r = c.get("/files/d/secret.txt")
        assert r.status_code == 400 and r.json()["error"] == "bad_path"
        assert SECRET not in r.content
        r = c.head("/files/d/secret.txt")
        assert r.status_code == 400
        r = c.get("/files/d/secret.txt", headers={"Range": "bytes=0-10"})
        assert r.status_code == 400 and SECRET[:11] not in r.content

        r = c.put("/files/d/secret.txt", content=b"overwritten")
        assert r.status_code == 400 and r.json()["error"] == "bad_path"
        r = c.put("/files/d/other.txt", content=b"created")
        assert r.status_code == 400 and r.json()["error"] == "bad_path"

        c.delete("/files/d/secret.txt")  # whatever it answers, it must not reach outside
    assert _snapshot(outside) == before
    assert (outside / "secret.txt").read_bytes() == SECRET


def test_registered_file_whose_cache_directory_is_a_symlink(server, outside):
    """GET also looks for a file's bytes in the cache area; a symlink there is refused too."""
    cache_root = getattr(server.store.local, "cache_root", None)
    if cache_root is None:
        pytest.skip("this version of the local store has no cache area")
    root = server.store.local.root
    with server.client() as c:
        assert c.put("/files/d/secret.txt", content=b"R" * len(SECRET)).status_code == 201
        (root / "d").rename(root / "d-moved")  # not in files/ any more: look in the cache
        (cache_root / "d").symlink_to(outside)
        before = _snapshot(outside)
        for method in ("GET", "HEAD"):
            r = c.request(method, "/files/d/secret.txt")
            assert r.status_code == 400, (method, r.status_code)
            assert SECRET not in r.content
    assert _snapshot(outside) == before


# --------------------------------------------------------------------------------------------
# Legitimate odd names, end to end through httpx
# --------------------------------------------------------------------------------------------

def _name_param(name: str) -> Any:
    short = name if len(name) <= 30 else f"{name[:12]}..{len(name.encode())}B"
    return pytest.param(name, id=short)


LEGIT = [
    _name_param("with space.txt"),
    _name_param("é.txt"),
    _name_param("é/日本.txt"),
    _name_param("100%.txt"),
    _name_param("%41"),
    _name_param("a%2fb"),
    _name_param("%zz"),
    _name_param("..."),
    _name_param("..a/a.."),
    _name_param(".hidden"),
    _name_param("q?mark#hash"),
    _name_param("semi;colon,comma=eq&amp+plus~tilde'quote\""),
    _name_param("brackets[]{}()<>|^`!$*@"),
    _name_param("emoji😀.bin"),
    _name_param("family👨\u200d👩\u200d👧.jpg"),  # ZWJ: emoji sequences need it
    _name_param("می\u200cخواهم.txt"),  # ZWNJ: Persian words need it
    _name_param("．．/x"),
    _name_param("dir/sub/leaf.bin"),
    _name_param("x" * MAX_SEGMENT_BYTES),
    _name_param("日" * (MAX_SEGMENT_BYTES // 3)),
    _name_param("/".join(["y" * 204] * 5)),
]


def _url(name: str) -> str:
    # Percent-encode everything but "/" once ourselves: httpx leaves valid %XX escapes alone, so
    # the server decodes exactly once and sees `name`.
    return "/files/" + quote(name, safe="/")


class Legit:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.client = server.client()


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legit]:
    env = Legit(LiveServer(tmp_path_factory.mktemp("legit") / "data"))
    yield env
    env.client.close()
    env.server.stop()


@pytest.mark.parametrize("name", LEGIT)
def test_legitimate_odd_name_round_trip(legit, tracebacks, name):
    root = legit.server.store.local.root
    body = hashlib.sha256(name.encode()).digest() * 3
    c = legit.client
    r = c.put(_url(name), content=body)
    tracebacks.settle(r.status_code)
    assert r.status_code == 201, r.text
    assert r.json()["path"] == name
    assert (root / name).read_bytes() == body  # the literal name on disk

    r = c.get(_url(name))
    assert r.status_code == 200 and r.content == body
    assert c.head(_url(name)).headers["content-length"] == str(len(body))
    items = c.get("/files/", params={"prefix": name}).json()["items"]
    assert [item["path"] for item in items] == [name]

    assert c.delete(_url(name)).status_code == 204
    assert c.get(_url(name)).status_code == 404
    assert not (root / name).exists()


# RFC 3986 path characters (pchar and "/"), with valid percent-escapes only.
_URI_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


@pytest.mark.parametrize("name", [
    "plain.txt",
    "dir/sub/leaf.bin",
    "..a/a..",
    "with space.txt",
    "q?mark#hash",
    "%41",
    "100%.txt",
    "é.txt",
    "日本.txt",
    "brackets[]{}<>|^`\"",
])
def test_put_location_header_is_a_uri_naming_the_file(legit, tracebacks, name):
    c = legit.client
    r = c.put(_url(name), content=b"where")
    tracebacks.settle(r.status_code)
    assert r.status_code in (200, 201), r.text
    location = r.headers["location"]
    assert _URI_PATH.fullmatch(location), location
    assert unquote(location) == "/files/" + name
    assert c.get(location).content == b"where"
    assert c.delete(location).status_code == 204


def test_percent_names_are_decoded_exactly_once(client, server):
    # "/files/%2541" names the three characters "%41", not "A".
    r = client.put("/files/%2541", content=b"pct")
    assert r.status_code == 201 and r.json()["path"] == "%41"
    assert client.get("/files/A").status_code == 404
    assert client.get("/files/%41").status_code == 404  # decodes once to "A"
    assert client.get("/files/%2541").content == b"pct"
    status, body = raw_request(server, "/files/%2541")
    assert status == 200 and body == b"pct"

    r = client.put("/files/a%252fb", content=b"one file")
    assert r.status_code == 201 and r.json()["path"] == "a%2fb"
    assert (server.store.local.root / "a%2fb").is_file()
    assert client.get("/files/a/b").status_code == 404

    r = client.put("/files/100%25.txt", content=b"hundred")
    assert r.status_code == 201 and r.json()["path"] == "100%.txt"
    assert client.get("/files/100%25.txt").content == b"hundred"


def test_unicode_name_via_httpx_and_raw(client, server, tracebacks):
    r = client.put("/files/é/日本.txt", content=b"nihon")  # httpx percent-encodes the UTF-8
    tracebacks.settle(r.status_code)
    assert r.status_code == 201 and r.json()["path"] == "é/日本.txt"
    status, body = raw_request(server, "/files/%C3%A9/%E6%97%A5%E6%9C%AC.txt")
    assert status == 200 and body == b"nihon"
    assert (server.store.local.root / "é" / "日本.txt").read_bytes() == b"nihon"


def test_nfd_and_nfc_spellings_name_one_file(client, server):
    r = client.put(_url("cafe\u0301.txt"), content=b"nfd")
    assert r.status_code == 201 and r.json()["path"] == "caf\u00e9.txt"
    r = client.get(_url("caf\u00e9.txt"))
    assert r.status_code == 200 and r.content == b"nfd"
    r = client.put(_url("caf\u00e9.txt"), content=b"nfc")
    assert r.status_code == 200  # replaced, not a second file
    assert [i["path"] for i in client.get("/files/").json()["items"]] == ["caf\u00e9.txt"]
    assert client.get(_url("cafe\u0301.txt")).content == b"nfc"
