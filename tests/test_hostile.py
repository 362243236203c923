"""Hostile input against the live server: property-based (hypothesis) request paths, GET and PUT
headers, listing queries and config values, and slow-loris clients against `filestore serve`.

Every request goes over a raw socket (no client normalises it) with a deadline; the properties
are the README's promises: never a 500, never a byte from outside the data directory (canaries
next to it), nothing outside it changed, never a hang. Examples are derandomized and no example
database is kept, so a CI run is reproducible.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import os
import re
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from conftest import LiveServer, wait_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from filestore.config import load_settings
from filestore.errors import BadPath, ConfigError
from filestore.paths import MAX_PATH_BYTES, normalize
from filestore.ranges import MAX_RANGES, RangeNotSatisfiable, parse_range

# Reproducible and quick: the same examples on every run, none remembered between runs.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_MORE = settings(FUZZ, max_examples=400)  # for the cheap ones
DEADLINE = 10.0  # seconds for one whole request/response; a hang fails the test

CANARY = b"filestore-canary-" + uuid.uuid4().hex.encode()
SQLITE_MAGIC = b"SQLite format 3"
PARSER_REFUSAL = b"Invalid HTTP request received."  # uvicorn's own 400
KNOWN = bytes(range(256)) * 12 + b"known-tail"  # 3082 bytes, no canary in it
VICTIM = b"a file the path fuzzer may reach, and delete"


# --------------------------------------------------------------------------------------------
# A raw HTTP/1.1 exchange: the bytes go out as given, the answer is parsed strictly
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    status: int  # 0: the server closed the connection without answering
    headers: dict[str, str]
    body: bytes
    raw: bytes


def exchange(port: int, head: bytes, body: bytes = b"", *, half_close: bool = False) -> Answer:
    """Send `head` (request line and headers, without the blank line) and `body`, read the
    answer to the end (the request says `Connection: close`). Fails on a hang past DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        try:
            sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early (a 400 for a bad request line, say)
        data = b""
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                raise AssertionError(f"no complete answer within {DEADLINE}s to "
                                     f"{head[:200]!r}: got {data[:200]!r}") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return parse_answer(data)


def parse_answer(data: bytes) -> Answer:
    if not data:
        return Answer(0, {}, b"", data)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"an answer without the end of its header: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 ([0-9]{3}) .*", lines[0])
    assert match, lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon and name == name.strip(), line
        headers[name.lower()] = value.strip()
    body = rest
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(rest)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        assert len(rest) in (0, length), (length, len(rest))  # 0: a HEAD, or cut short
        body = rest
    return Answer(int(match.group(1)), headers, body, data)


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[line_end + 2: line_end + 2 + size]
        pos = line_end + 2 + size + 2


def request(port: int, method: str, target: bytes, headers: dict[str, str] | None = None,
            body: bytes = b"", **kwargs: Any) -> Answer:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    # UTF-8 on the wire, as a careless client would send non-latin-1 text; the server reads
    # header bytes as latin-1.
    lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
    return exchange(port, b"\r\n".join(lines), body, **kwargs)


# --------------------------------------------------------------------------------------------
# The target: one server for the module, canaries around its data directory
# --------------------------------------------------------------------------------------------

class Target:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        # Canaries where a traversal out of data/files or data/cache would land, one beside the
        # data directory whose name starts like it (a prefix check without a separator), and one
        # in the system's temp directory.
        self.canaries = [base / "secret.txt", base / "etc" / "passwd", base / "files" / "a",
                         base / "data-other" / "secret.txt",
                         Path(tempfile.gettempdir()) / f"filestore-canary-{uuid.uuid4().hex}"]
        for canary in self.canaries:
            canary.parent.mkdir(parents=True, exist_ok=True)
            canary.write_bytes(CANARY + b"\n")
        self.server = LiveServer(self.data)
        self.port = self.server.port
        self.token = self.server.token
        self.auth = {"Authorization": f"Bearer {self.token}"}
        with self.server.client() as client:
            assert client.put("/files/known.txt", content=KNOWN).status_code == 201
            assert client.put("/files/victim.txt", content=VICTIM).status_code == 201
            self.etag = client.head("/files/known.txt").headers["etag"]
            self.last_modified = client.head("/files/known.txt").headers["last-modified"]
        self.outside = self.snapshot_outside()

    def snapshot_outside(self) -> dict[str, bytes]:
        """Every file outside the data directory that a request could reach, hashed."""
        found: dict[str, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            if Path(dirpath) == self.base:
                dirnames.remove("data")
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                found[str(full)] = (hashlib.sha256(full.read_bytes()).digest()
                                    if full.is_file() else b"dir")
        tmp_canary = self.canaries[-1]
        found[str(tmp_canary)] = hashlib.sha256(tmp_canary.read_bytes()).digest()
        return found

    def assert_safe(self, answer: Answer, what: object) -> None:
        """The properties every answer has, whatever was asked."""
        assert answer.status < 500, (what, answer.status, answer.raw[:400])
        for secret in (CANARY, SQLITE_MAGIC, self.token.encode()):
            assert secret not in answer.raw, (what, secret, answer.raw[:400])

    def assert_outside_unchanged(self, what: object) -> None:
        assert self.snapshot_outside() == self.outside, what

    def stop(self) -> None:
        self.server.stop()
        self.canaries[-1].unlink(missing_ok=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    found = Target(tmp_path_factory.mktemp("hostile"))
    yield found
    found.stop()


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

# Pieces a hostile request-target is made of: traversal, encodings of it (once, twice,
# overlong UTF-8, fullwidth and other look-alike dots), separators, control characters, names of
# what sits in and beside the data directory, and over-long runs.
PATH_PIECES = [
    "..", ".", "/", "//", "\\", "%2e", "%2E", "%2e%2e", "%252e", "%252e%252e", "%25", "%", "%%",
    "%g0", "%2", "%2f", "%2F", "%252f", "%5c", "%5C", "%255c", "%00", "%2500", "%0a", "%0d",
    "%09", "%7f", "%c2%85", "%c0%ae", "%c0%af", "%e0%80%ae", "%ef%bc%8e", "%e2%80%a4",
    "%ef%b9%92", "%e2%81%84", "%ef%bc%8f", "%ff", "%fe%ff", "%ed%a0%80", "%f4%90%80%80",
    "%ef%bf%be", "%f4%8f%bf%bf", "e%cc%81", "%c3%a9", "%e1%84%80%e1%85%a1", "etc", "passwd",
    "secret.txt", "data", "files", "cache", "tmp", "token", "registry.sqlite3", "remote",
    "victim.txt", "data-other", "~", "%7e", "$HOME", "?", "#", ";", "%3b", "%3f", "%23", ":",
    "C:", "%20", "+", "a" * 255, "b" * 256, "%61" * 300, "é", "\t", " ", "\x00", "\xff",
]

path_strategy = st.lists(
    st.one_of(st.sampled_from(PATH_PIECES), st.text(string.printable, max_size=6)),
    min_size=1, max_size=8,
).map("".join)


# The routes a path reaches: the file API, and the admin API's file info and eviction.
PATH_ROUTES = {
    "GET": ("GET", b"/files/", b""), "HEAD": ("HEAD", b"/files/", b""),
    "PUT": ("PUT", b"/files/", b""), "DELETE": ("DELETE", b"/files/", b""),
    "INFO": ("GET", b"/admin/api/files/", b""), "EVICT": ("POST", b"/admin/api/files/", b"/evict"),
}


@FUZZ_MORE
@given(path=path_strategy, route=st.sampled_from(sorted(PATH_ROUTES)))
def test_any_request_path_is_answered_safely(target, path, route):
    method, before, after = PATH_ROUTES[route]
    raw = before + path.encode("utf-8", "surrogateescape") + after
    headers: dict[str, str] = {}
    body = b""
    if route != "GET" and route != "HEAD":
        headers = dict(target.auth)
    if method in ("PUT", "POST"):
        body = b"put-by-the-fuzzer " + path.encode("utf-8", "surrogateescape")
        headers["Content-Length"] = str(len(body))
    answer = request(target.port, method, raw, headers, body)
    event(f"{route} {answer.status}")  # --hypothesis-show-statistics: what the examples reached
    target.assert_safe(answer, (method, raw))
    if route == "PUT" and answer.status in (200, 201):
        # Accepted: the same target reads back exactly what was written, and the bytes are
        # inside data/files under the name the server reported.
        stored = json.loads(answer.body)["path"]
        local = target.data / "files" / stored
        assert local.resolve().is_relative_to((target.data / "files").resolve()), stored
        assert local.read_bytes() == body
        again = request(target.port, "GET", raw)
        assert (again.status, again.body) == (200, body), raw
        assert request(target.port, "DELETE", raw, target.auth).status == 204
    if route == "DELETE" and answer.status == 204:
        # The one file a fuzzed path may name: put it back for the next examples.
        assert request(target.port, "GET", b"/files/victim.txt").status == 404, raw
        put = request(target.port, "PUT", b"/files/victim.txt",
                      {**target.auth, "Content-Length": str(len(VICTIM))}, VICTIM)
        assert put.status == 201
    target.assert_outside_unchanged((method, raw))


# --------------------------------------------------------------------------------------------
# Range and conditional headers on a GET
# --------------------------------------------------------------------------------------------

def _header_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Header values as a client can send them: mostly printable latin-1, now and then a
    control character (which the HTTP parser itself refuses); never CR or LF."""
    printable = st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                              exclude_characters="\x7f")
    anything = st.characters(min_codepoint=1, max_codepoint=0xFF, exclude_characters="\r\n")
    return st.one_of(st.text(printable, max_size=max_size), st.text(printable, max_size=max_size),
                     st.text(anything, max_size=max_size)).map(str.strip)


_small = st.integers(0, len(KNOWN) + 10).map(str)
_numbers = st.one_of(_small, _small, _small, st.integers(0, 2**70).map(str),
                     st.sampled_from([str(2**63 - 1), str(2**64), "0" * 30 + "5", "9" * 40]))
_range_spec = st.one_of(
    st.tuples(_numbers, st.just("-"), _numbers).map("".join),
    st.tuples(_numbers, st.just("-"), _numbers).map("".join),
    st.tuples(_numbers, st.just("-")).map("".join),
    st.tuples(st.just("-"), _numbers).map("".join),
    st.sampled_from(["", " ", "-", "--1", "1--2", "0x10-20", "١-٢", "1-2-3", "a-b", "0-0",
                     " 5 - 9 ", "+1-2"]),
    _header_text(8),
)
range_strategy = st.one_of(
    st.lists(_range_spec, min_size=1, max_size=3).map(lambda specs: "bytes=" + ",".join(specs)),
    st.lists(_range_spec, max_size=40).map(lambda specs: "bytes=" + ",".join(specs)),
    st.tuples(st.sampled_from(["bytes", "Bytes", "BYTES ", "items", "", "bytes;"]),
              st.sampled_from(["=", " = ", ":", ""]),
              st.lists(_range_spec, max_size=5).map(",".join)).map("".join),
    _header_text(),
)
_dates = st.one_of(
    st.sampled_from(["Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
                     "Mon, 32 Foo 2020 25:61:61 GMT", "Sun, 06 Nov 1994 08:49:37 +9999",
                     "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "0", "-1",
                     "99999999999999999999"]),
    _header_text(),
)


def _etag_list(current: str) -> st.SearchStrategy[str]:
    tag = st.one_of(st.just(current), st.just("W/" + current), st.just("*"),
                    _header_text(70).map(lambda t: f'"{t}"'), _header_text(70))
    return st.lists(tag, min_size=1, max_size=4).map(", ".join)


FUZZ_PURE = settings(FUZZ, max_examples=500)  # no server involved


@FUZZ_PURE
@given(raw=st.one_of(st.text(), path_strategy))
def test_a_normalized_path_stays_below_its_root_however_often_it_is_decoded(raw):
    """The check itself: whatever it accepts names a file below the root, now and after any
    number of further percent-decodings (a proxy, a script or S3 tooling may decode again)."""
    try:
        path = normalize(raw)
    except BadPath:
        return
    assert normalize(path) == path
    assert len(path.encode("utf-8")) <= MAX_PATH_BYTES
    decoded = path
    for _ in range(5):
        assert not decoded.startswith("/") and "\\" not in decoded and "\0" not in decoded
        assert all(segment not in ("", ".", "..") for segment in decoded.split("/")), raw
        decoded = unquote(decoded)
    assert os.path.normpath(f"/root/{path}").startswith("/root/")


@FUZZ_PURE
@given(header=st.one_of(range_strategy, _header_text()), size=st.integers(0, 10**7))
def test_parsed_ranges_lie_inside_the_file(header, size):
    try:
        ranges = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if ranges is None:
        return
    assert 1 <= len(ranges) <= MAX_RANGES
    assert all(0 <= first <= last < size for first, last in ranges), (header, size, ranges)
    ordered = sorted(ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ordered)), ranges


@st.composite
def get_headers(draw: st.DrawFn, etag: str, last_modified: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if draw(st.integers(0, 3)):  # a Range, mostly
        headers["Range"] = draw(range_strategy)
    conditions = {
        "If-Match": _etag_list(etag),
        "If-None-Match": _etag_list(etag),
        "If-Modified-Since": st.one_of(st.just(last_modified), _dates),
        "If-Unmodified-Since": st.one_of(st.just(last_modified), _dates),
        "If-Range": st.one_of(st.just(etag), st.just(last_modified), _dates, _etag_list(etag)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(conditions)), unique=True, max_size=3)):
        headers[name] = draw(conditions[name])
    return headers


def _check_parts(answer: Answer, body: bytes) -> None:
    """A 206 holds exactly the bytes its Content-Range (or each part's) names."""
    size = len(body)
    ctype = answer.headers["content-type"]
    if not ctype.startswith("multipart/byteranges"):
        match = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", answer.headers["content-range"])
        assert match, answer.headers["content-range"]
        first, last, total = map(int, match.groups())
        assert total == size and first <= last < size
        assert answer.body == body[first:last + 1]
        return
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    parts = answer.body.split(b"--" + boundary)
    assert parts[-1].strip() in (b"--", b""), parts[-1][:100]
    for part in parts[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        match = re.search(rb"content-range: bytes ([0-9]+)-([0-9]+)/([0-9]+)", head, re.I)
        assert match, head
        first, last, total = map(int, match.groups())
        assert total == size and first <= last < size
        assert data.removesuffix(b"\r\n") == body[first:last + 1]


@FUZZ_MORE
@given(data=st.data(), method=st.sampled_from(["GET", "HEAD"]))
def test_any_range_and_conditional_headers(target, data, method):
    headers = data.draw(get_headers(target.etag, target.last_modified))
    answer = request(target.port, method, b"/files/known.txt", headers)
    event(f"{method} {answer.status}")
    target.assert_safe(answer, headers)
    if answer.status == 400:  # a value the HTTP parser itself refuses (a control character)
        assert answer.body == PARSER_REFUSAL, (headers, answer.raw[:300])
        return
    assert answer.status in (200, 206, 304, 412, 416), (headers, answer.raw[:300])
    if method == "HEAD":
        assert answer.body == b"" or answer.status in (412, 416)
        return
    if answer.status == 200:
        assert answer.body == KNOWN
    elif answer.status == 206:
        _check_parts(answer, KNOWN)
    elif answer.status == 416:
        assert answer.headers["content-range"] == f"bytes */{len(KNOWN)}"


# --------------------------------------------------------------------------------------------
# PUT headers: checksums, preconditions, content types, and Content-Length lies
# --------------------------------------------------------------------------------------------

@st.composite
def put_case(draw: st.DrawFn, etag: str) -> tuple[dict[str, str], bytes, str]:
    body = draw(st.binary(max_size=3000))
    headers: dict[str, str] = {}
    sha = hashlib.sha256(body).hexdigest()
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    choices = {
        "Content-MD5": st.one_of(st.just(md5), st.just(md5[:-2]), st.just(md5.lower()),
                                 _header_text()),
        "X-Checksum-SHA256": st.one_of(st.just(sha), st.just(sha.upper()), st.just(sha[:-1]),
                                       st.just(" " + sha + " "), _header_text(70)),
        "If-Match": _etag_list(etag),
        "If-None-Match": _etag_list(etag),
        "If-Unmodified-Since": _dates,
        "Content-Type": st.one_of(st.sampled_from(["text/html", "image/png; x=1", ""]),
                                  _header_text()),
    }
    for name in draw(st.lists(st.sampled_from(sorted(choices)), unique=True, max_size=4)):
        headers[name] = draw(choices[name])
    # How the length is told: truthfully, too long (then the client stops sending), too short
    # (the rest looks like a next request), not at all (chunked), or as garbage.
    lie = draw(st.sampled_from(["exact", "exact", "longer", "shorter", "chunked", "garbage"]))
    if lie == "exact":
        headers["Content-Length"] = str(len(body))
    elif lie == "longer":
        headers["Content-Length"] = str(len(body) + draw(st.integers(1, 10**6)))
    elif lie == "shorter":
        headers["Content-Length"] = str(draw(st.integers(0, len(body))))
    elif lie == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = draw(st.sampled_from(
            ["-1", "1e3", "+12", "0x10", "١٢", "99999999999999999999999", "1, 2", ""]))
    return headers, body, lie


@FUZZ
@given(data=st.data())
def test_any_put_headers(target, data):
    path = b"/files/put/target.bin"
    before = request(target.port, "GET", path)
    headers, body, lie = data.draw(put_case(target.etag))
    wire = body
    if lie == "chunked":
        wire = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    answer = request(target.port, "PUT", path, {**target.auth, **headers}, wire,
                     half_close=lie in ("longer", "garbage"))
    event(f"{lie} {answer.status}")
    target.assert_safe(answer, headers)
    after = request(target.port, "GET", path)
    if answer.status in (200, 201):
        sent = body[: int(headers["Content-Length"])] if lie == "shorter" else body
        assert after.status == 200 and after.body == sent, headers
        stored = json.loads(answer.body)
        assert stored["sha256"] == hashlib.sha256(sent).hexdigest()
    else:
        # Refused (or the client went away): what was there before is still there, untouched.
        assert answer.status in (0, 400, 412, 413), (headers, answer.raw[:300])
        assert (after.status, after.body) == (before.status, before.body), headers
    # Nothing received is left behind in tmp/, whatever happened to the request.
    wait_for(lambda: not any((target.data / "tmp").iterdir()), timeout=5)
    target.assert_outside_unchanged(headers)


# --------------------------------------------------------------------------------------------
# Listing query strings
# --------------------------------------------------------------------------------------------

_query_value = st.one_of(
    st.sampled_from(["", "0", "1", "1000", "1001", "-1", "1e3", "01", "１", "²",
                     "99999999999999999999", "put/", "known.txt", "%2e%2e", "..", "../", "a//",
                     "%00", "%ff", "%", "%2", "\U0010ffff", "%f4%8f%bf%bf", "/", "+", "%20"]),
    st.text(string.printable, max_size=10).map(lambda t: quote(t, safe="%/")),
)


@FUZZ_MORE
@given(params=st.lists(st.tuples(st.sampled_from(["prefix", "limit", "after", "x", "prefix[]"]),
                                 _query_value), max_size=5))
def test_any_listing_query(target, params):
    query = "&".join(f"{k}={v}" for k, v in params).encode("utf-8", "surrogateescape")
    answer = request(target.port, "GET", b"/files/?" + query, target.auth)
    event(f"listing {answer.status}")
    target.assert_safe(answer, query)
    assert answer.status in (200, 400), (query, answer.raw[:300])
    if answer.status == 200:
        listing = json.loads(answer.body)
        paths = [item["path"] for item in listing["items"]]
        assert paths == sorted(paths) and len(paths) <= 1000


# --------------------------------------------------------------------------------------------
# Config values: load_settings says ConfigError or gives settings, nothing else
# --------------------------------------------------------------------------------------------

_KEYS = {
    "server": ["host", "port", "workers", "nope"],
    "storage": ["data_dir", "max_upload_size", "min_free"],
    "auth": ["token", "public_read"],
    "upload": ["enabled", "delay", "concurrency", "max_attempts", "keep_local", "delete_delay",
               "retry_base", "retry_max"],
    "remote": ["url", "endpoint_url", "addressing_style", "multipart_threshold", "part_size",
               "max_connections"],
    "cache": ["max_size", "min_free", "sample", "fill_timeout"],
    "nosuch": ["key"],
}
_toml_value = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True).map(repr),
    st.sampled_from(["true", "false", "inf", "-inf", "nan", "[]", "[1, 2]", "{}", "{a = 1}",
                     "1979-05-27T07:32:00Z", "07:32:00", '"10GiB"', '"1e3"', '"-5s"', '"1h30m"',
                     '"0"', '"never"', '"~nosuchuser/x"', '"\\u0000"', '""', "'''x'''"]),
    st.text(max_size=12).map(json.dumps),
    st.text(max_size=12),  # not TOML at all, often
)
_env_value = st.one_of(st.sampled_from(["0", "-1", "10GiB", "1.5KiB", "never", "true", "yes",
                                        "nan", "inf", "1e9", "99999999999999999999999", " "]),
                       st.text(st.characters(min_codepoint=1, exclude_categories=["Cs"]),
                               max_size=12))


@st.composite
def config_case(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    lines = []
    for section in draw(st.lists(st.sampled_from(sorted(_KEYS)), unique=True, max_size=3)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(_KEYS[section]), unique=True, max_size=3)):
            lines.append(f"{key} = {draw(_toml_value)}")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=20)))
    environ = {}
    for section, keys in draw(st.lists(st.sampled_from(sorted(_KEYS.items())), max_size=3)):
        var = f"FILESTORE_{section.upper()}__{draw(st.sampled_from(keys)).upper()}"
        environ[var] = draw(_env_value)
    return "\n".join(lines), environ


@FUZZ
@given(case=config_case())
def test_any_config_is_settings_or_a_config_error(tmp_path_factory, case):
    text, environ = case
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        found = load_settings(path, environ)
    except ConfigError as exc:
        event("ConfigError")
        assert "\n" not in exc.detail.strip() or "invalid TOML" in exc.detail
        return
    event("settings")
    # What loaded is usable as it is: every value of its declared kind.
    assert isinstance(found.server.port, int) and 0 <= found.server.port <= 65535
    assert found.storage.min_free >= 0 and found.cache.max_size >= 0


# --------------------------------------------------------------------------------------------
# Slow clients against the real `filestore serve`
# --------------------------------------------------------------------------------------------

SLOW_CLIENTS = 150  # of each kind; bounded, well under any file-descriptor limit


def _open_slow(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head)
    return sock


def test_slow_headers_and_bodies_do_not_starve_a_fresh_client(tmp_path, serve_process):
    server = serve_process(tmp_path / "data").start()
    with server.client() as client:
        assert client.put("/files/hello.txt", content=b"hello").status_code == 201
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    slow = []
    try:
        for i in range(SLOW_CLIENTS):
            # Headers that never end, and bodies that never arrive.
            slow.append(_open_slow(server.port, b"GET /files/hello.txt HTTP/1.1\r\nX-Slow: "))
            slow.append(_open_slow(server.port, b"PUT /files/slow/%d HTTP/1.1\r\n%s"
                                   b"Content-Length: 1000000\r\n\r\n" % (i, auth)))
        for _ in range(5):
            for sock in slow:
                sock.sendall(b"a")  # one more byte from each, as a slow-loris trickles
            started = time.monotonic()
            with httpx.Client(timeout=DEADLINE) as fresh:
                answer = fresh.get(f"{server.url}/files/hello.txt")
            assert answer.status_code == 200 and answer.content == b"hello"
            assert time.monotonic() - started < 2.0
    finally:
        for sock in slow:
            sock.close()
    # The abandoned bodies leave nothing behind.
    wait_for(lambda: not any((tmp_path / "data" / "tmp").iterdir()), timeout=10)
    with server.client() as client:
        assert client.get("/files/", params={"prefix": "slow/"}).json()["items"] == []


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_an_endless_request_head_is_refused_not_buffered(tmp_path, serve_process):
    server = serve_process(tmp_path / "data").start()
    pid = server.proc.pid  # one worker: uvicorn serves in this process
    heads = {
        "one endless header": (b"GET /files/x HTTP/1.1\r\nX-Big: ", b"a" * 65536),
        "an endless URL": (b"GET /files/", b"a" * 65536),
        "endless small headers": (b"GET /files/x HTTP/1.1\r\n", b"X-A: b\r\n" * 8192),
    }
    growth = {}
    for name, (opening, filler) in heads.items():
        before = _rss(pid)
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
            try:
                sock.sendall(opening)
                for _ in range(16 * 1024 * 1024 // len(filler)):  # 16 MiB of one request head
                    sock.sendall(filler)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused: what should happen
            growth[name] = _rss(pid) - before
        assert httpx.get(f"{server.url}/healthz", timeout=DEADLINE).status_code == 200
    assert all(grown < 4 * 1024 * 1024 for grown in growth.values()), growth


@pytest.mark.parametrize("case", ["tilde-user", "nul", "config-below-a-file"])
def test_an_unusable_path_in_the_config_is_one_line_exit_2(tmp_path, case):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    args = [sys.executable, "-m", "filestore", "token"]
    if case == "tilde-user":
        env["FILESTORE_STORAGE__DATA_DIR"] = "~filestore-no-such-user/data"
    elif case == "nul":
        config = tmp_path / "nul.toml"
        config.write_text('[storage]\ndata_dir = "a\\u0000b"\n')
        args += ["--config", str(config)]
    else:
        (tmp_path / "file").write_text("")
        args += ["--config", str(tmp_path / "file" / "filestore.toml")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
