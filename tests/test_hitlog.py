"""hitlog.py: the hits nginx answers itself from the static tree, logged to DATA/hits.log, are
counted in the request metrics and as the cache's hits, by the one process that reads the log.

The end-to-end test runs a real nginx (found on PATH or in /usr/sbin; without it, it skips)
whose access log for a static location goes to that file, in front of nothing: nginx answers
every request itself, from hard links to a real server's cache entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, counters, free_port, registry_db, uploaded, wait_for
from prometheus_client.parser import text_string_to_metric_families

from filestore import hitlog
from filestore.hitlog import Batch, Counting, Hit, Receiver, parse

pytestmark = pytest.mark.timeout(60)

NGINX = shutil.which("nginx", path=os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed "
                                 "(CI installs it: apt-get install -y nginx)")

# As nginx 1.22 writes them (the log format of deploy/nginx.conf).
REAL = [
    (b"GET 200 11 0.000 /files/a b \\xC3\\xA9\\x22.txt",
     Hit("GET", 200, 11, 0.0, 'a b \u00e9".txt')),
    (b"HEAD 200 0 0.000 /files/dir/x.bin",
     Hit("HEAD", 200, 0, 0.0, "dir/x.bin")),
    (b"GET 206 3 0.012 /files/dir/x.bin",
     Hit("GET", 206, 3, 0.012, "dir/x.bin")),
    (b"GET 304 0 0.000 /files/x",
     Hit("GET", 304, 0, 0.0, "x")),
    (b"GET 416 206 1.250 /files/x",
     Hit("GET", 416, 206, 1.25, "x")),
]


def log_line(uri: str, method: str = "GET", status: int = 200, sent: int = 5,
             seconds: str = "0.001") -> bytes:
    """A line as nginx writes it: `$uri`'s bytes below 0x20, `"`, `\\` and from 0x7f on as
    `\\xXX`."""
    escaped = "".join(f"\\x{b:02X}" if b < 0x20 or b >= 0x7F or b in b'"\\' else chr(b)
                      for b in uri.encode("utf-8", "surrogatepass"))
    return f"{method} {status} {sent} {seconds} {escaped}".encode()


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "hit"), REAL)
def test_nginx_lines_parse(line: bytes, hit: Hit) -> None:
    assert parse(line) == hit


def test_what_parsing_accepts() -> None:
    # The line as nginx writes it to a file (deploy/nginx.conf), without syslog's framing.
    assert parse(b"GET 200 11 0.000 /files/a") == Hit("GET", 200, 11, 0.0, "a")
    # Lower-case hex, a trailing newline; not a syslog datagram's framing (nginx writes a file).
    assert parse(b"GET 200 1 0.000 /files/\\xc3\\xa9\n") == Hit("GET", 200, 1, 0.0, "\u00e9")
    assert parse(b"<190>Dec  7 18:03:53 filestore: GET 200 1 0.000 /files/a") is None
    # A path in filestore's terms: NFC, as normalize stores it; a "%" is a "%" ($uri is decoded).
    assert parse(log_line("/files/e\u0301.txt")).path == "\u00e9.txt"  # type: ignore[union-attr]
    assert parse(log_line("/files/100%25 x")).path == "100%25 x"  # type: ignore[union-attr]
    assert parse(log_line("/files/x", method="PROPFIND")).method == "PROPFIND"  # type: ignore[union-attr]
    assert parse(log_line("/files/" + "a" * 255)) is not None
    assert [h.reads for h in (parse(line) for line, _ in REAL)] == [  # type: ignore[union-attr]
        True, False, True, False, False]


@pytest.mark.parametrize("uri", [
    "/files/../x", "/files/a/../../x", "/files/./x", "/files/a//b", "/files/a/", "/files/",
    "/files//etc/passwd", "/files/a\\b", "/files/a\x00b", "/files/a\nb", "/files/a\x7fb",
    "/files/%2e%2e/x", "/files/a%2F..%2F..%2Fx", "/files/%252e%252e/x", "/files/%ff",
    "/files/invoice\u202efdp.exe", "/files/a\u200bb", "/files/\ufffe", "/files/" + "a" * 256,
    "/files/" + "/".join(["abcdefghi"] * 103), "/x", "/filesx/a", "/admin/x", "/", "files/a",
])
def test_hostile_or_foreign_paths_are_dropped(uri: str) -> None:
    assert parse(log_line(uri)) is None


@pytest.mark.parametrize("line", [
    b"", b"\n", b"garbage", b"\xff\xfe\x00", b"<190>", b"<190>GET 200 11 0.000 /files/a",
    b"GET",
    b"GET 200 11 /files/a",  # a field missing
    b"GET 200 0.000 /files/a",
    b"GET 11 0.000 /files/a",
    b"GET 200 11 0.000",
    b"GET 2000 11 0.000 /files/a",
    b"GET abc 11 0.000 /files/a",
    b"GET 200 -1 0.000 /files/a",
    b"GET 200 - 0.000 /files/a",
    b"GET 200 11 - /files/a",
    b"get 200 11 0.000 /files/a",
    b"GET  200 11 0.000 /files/a",
    # syslog's framing, not the file's lines
    b"<190>Dec  7 18:03:53 filestore:GET 200 11 0.000 /files/a",
    b"<190>Dec  7 18:03:53: GET 200 11 0.000 /files/a",
    b"<190>7 Dec 18:03:53 filestore: GET 200 11 0.000 /files/a",
    b"<1900>Dec  7 18:03:53 filestore: GET 200 11 0.000 /files/a",
    b"GET 200 11 0.000 /files/a\nGET 200 1 0.0 /files/b",
    b"GET 200 11 0.000 /files/a\xc3\xa9",  # unescaped bytes
    b"GET 200 11 0.000 /files/a\\q",  # no escape
    b"GET 200 11 0.000 /files/a\\x4",
    b"GET 200 11 0.000 /files/a\\xZZ",
    b"GET 200 11 0.000 /files/a\\",
    b"GET 200 11 0.000 /files/\\xC3",  # not UTF-8
    b"GET 200 11 0.000 /files/\\xED\\xA0\\x80",  # a surrogate
])
def test_malformed_lines_are_dropped(line: bytes) -> None:
    assert parse(line) is None


def test_parsing_never_raises() -> None:
    rng = random.Random(20240607)
    seeds = [line for line, _ in REAL] + [log_line("/files/d\u00e9j\u00e0/vu \u2603.txt")]
    for _ in range(20000):
        line = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(line))
            action = rng.randrange(3)
            if action == 0:
                line[at] = rng.randrange(256)
            elif action == 1:
                del line[at]
            else:
                line.insert(at, rng.choice(b"\\x %/.:<>0123456789AF\xff\x00"))
        hit = parse(bytes(line))
        assert hit is None or isinstance(hit, Hit)
    for _ in range(2000):
        assert parse(rng.randbytes(rng.randrange(200))) is None


def test_a_batch_is_bounded_by_its_paths() -> None:
    batch = Batch(max_paths=3)
    for path in ("a", "b", "a", "c", "a"):
        assert batch.add(Hit("GET", 200, 10, 0.0, path))
    assert not batch.add(Hit("GET", 200, 10, 0.0, "d"))  # full: a path more is refused
    assert batch.add(Hit("GET", 206, 1, 0.0, "b"))  # a path it holds is still gathered
    assert len(batch) == 3
    assert batch.take() == {"a": [3, 30], "b": [2, 11], "c": [1, 10]}
    assert len(batch) == 0 and batch.add(Hit("GET", 200, 10, 0.0, "d"))
    assert batch.add(Hit("GET", 200, 10, 0.0, "d"), times=4)  # alike lines, counted at once
    assert batch.take() == {"d": [5, 50]}


# -- the election ---------------------------------------------------------------------------------


def send(path: Path, data: bytes) -> None:
    """Append a line, as nginx does (O_APPEND)."""
    with open(path, "ab") as log:
        log.write(data + b"\n")


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Callable[[], Receiver]]:
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver(tmp_path))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def test_one_reader_reads_and_another_takes_over_when_it_stops(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    log = tmp_path / "hits.log"
    send(log, b"before any reader")  # a former reader's: never read again
    first, second = receivers(), receivers()
    assert first.elect() and first.bound
    assert not second.elect() and not second.bound  # the lock is held: it waits its turn
    assert stat.S_ISREG(log.stat().st_mode)
    assert first.lines() == []
    send(log, b"one")
    with open(log, "ab") as partial:  # a line being written: read once it is whole
        partial.write(b"tw")
    assert first.lines() == [b"one"]
    with open(log, "ab") as partial:
        partial.write(b"o\n")
    assert first.lines() == [b"two"]
    assert first.lines() == []
    first.close()
    assert log.exists()  # nginx keeps writing to it
    assert second.elect() and second.bound
    send(log, b"three")
    assert second.lines() == [b"three"]
    assert not first.elect()  # and now the first waits


def test_a_too_long_line_is_dropped_whole(receivers: Callable[[], Receiver],
                                          tmp_path: Path) -> None:
    receiver = receivers()
    assert receiver.elect()
    send(tmp_path / "hits.log", b"x" * (hitlog.MAX_LINE + 100))
    send(tmp_path / "hits.log", b"after")
    assert receiver.lines() == [b"", b"after"]
    with open(tmp_path / "hits.log", "ab") as endless:  # no newline yet, and too long already
        endless.write(b"y" * (hitlog.MAX_LINE + 1))
    assert receiver.lines(budget=hitlog.MAX_LINE + 1) == [b""]


def test_the_log_is_emptied_once_read_and_large(receivers: Callable[[], Receiver],
                                                tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(hitlog, "TRUNCATE_AT", 100)
    receiver = receivers()
    assert receiver.elect()
    log = tmp_path / "hits.log"
    for n in range(20):
        send(log, b"line %d" % n)
    assert len(receiver.lines()) == 20
    assert log.stat().st_size == 0 and receiver.offset == 0
    send(log, b"next")  # appended at the start again
    assert receiver.lines() == [b"next"]
    log.write_bytes(b"")  # emptied by someone else (and now shorter): read from the start
    send(log, b"ab")
    assert receiver.lines() == [b"ab"]


def test_a_killed_readers_lock_goes_with_it(tmp_path: Path,
                                            receivers: Callable[[], Receiver]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from filestore.hitlog import Receiver; r = Receiver(Path(sys.argv[1])); "
         "print(r.elect(), flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "True\n"
        receiver = receivers()
        assert not receiver.elect()
    finally:
        child.kill()
        child.wait(timeout=10)
    assert wait_for(receiver.elect)
    send(tmp_path / "hits.log", b"hello")
    assert receiver.lines() == [b"hello"]


def test_what_is_no_regular_file_is_refused(tmp_path: Path,
                                            receivers: Callable[[], Receiver]) -> None:
    (tmp_path / "hits.log").mkdir()
    receiver = receivers()
    with pytest.raises(OSError):
        receiver.elect()
    (tmp_path / "hits.log").rmdir()
    assert receiver.elect()


# -- counting, in a real server's event loop ------------------------------------------------------


def in_loop(server: LiveServer, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
    """Run `coroutine` on the server's event loop (where its requests are counted)."""
    loop = server.server.servers[0].get_loop()
    return asyncio.run_coroutine_threadsafe(coroutine, loop)


def started_run(server: LiveServer) -> tuple[Future[Any], threading.Event]:
    """`hitlog.run` on the server's loop, as the lifespan starts it; and an event set once it
    has ended, its own `finally` run."""
    stopped = threading.Event()

    async def tracked() -> None:
        try:
            await hitlog.run(server.service, server.settings)
        finally:
            stopped.set()

    return in_loop(server, tracked()), stopped


def cached_server(make_server: Any, files: dict[str, bytes]) -> LiveServer:
    """A server whose `files` are uploaded, so their bytes are cache entries."""
    server: LiveServer = make_server(upload__delay="0s")
    with server.client() as client:
        for path, body in files.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    wait_for(lambda: all(uploaded(server, path) for path in files))
    for path in files:
        assert (server.settings.data_dir / "cache" / path).is_file()
    return server



def scrape(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with server.client(auth=False) as anon:
        reply = anon.get("/metrics")
    assert reply.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples}


def requests(samples: dict[Any, float], method: str, status: int) -> float:
    return samples.get(("filestore_http_requests_total", (
        ("method", method), ("route", "files"), ("status", str(status)))), 0.0)


def last_access(server: LiveServer, path: str) -> float:
    with contextlib.closing(registry_db(server)) as conn:
        row = conn.execute("SELECT last_access FROM cache_entries WHERE path = ?",
                           (path,)).fetchone()
    return float(row[0])


def test_a_flood_of_paths_keeps_the_batch_bounded(make_server: Any) -> None:
    server = cached_server(make_server, {"hot/a.bin": b"a" * 100})
    before = counters(server)
    seen: list[int] = []

    async def flood() -> None:
        counting = Counting(server.service, Batch(max_paths=8))
        for n in range(3000):
            path = "hot/a.bin" if n % 3 == 0 else f"cold/{n}.bin"  # one entry, many strangers
            await counting.take_in(log_line(f"/files/{path}", sent=100))
            seen.append(len(counting.batch))
        await counting.apply()

    in_loop(server, flood()).result(timeout=30)
    assert max(seen) == 8  # applied whenever full, never grown
    wait_for(lambda: counters(server).get("cache.hits", 0) == before.get("cache.hits", 0) + 1000)
    assert counters(server)["cache.hit_bytes"] == before.get("cache.hit_bytes", 0) + 100_000


def test_run_counts_and_another_run_takes_over_when_it_stops(make_server: Any) -> None:
    server = cached_server(make_server, {"t.bin": b"t" * 10})
    log = server.settings.data_dir / "hits.log"
    first, stopped = started_run(server)
    wait_for(log.exists)
    second, _ = started_run(server)  # waits its turn
    start = counters(server).get("cache.hits", 0)
    send(log, log_line("/files/t.bin", sent=10))
    wait_for(lambda: counters(server).get("cache.hits", 0) == start + 1)
    first.cancel()
    assert stopped.wait(timeout=10)  # its `finally` ran: its lock is gone
    # The second opens the log within a second, from its end; a line then is its to count.
    deadline = counters(server).get("cache.hits", 0)

    def counted_again() -> bool:
        send(log, log_line("/files/t.bin", sent=10))
        return counters(server).get("cache.hits", 0) > deadline

    wait_for(counted_again, timeout=10, interval=0.5)
    assert first.cancelled() and not second.done()
    second.cancel()


# -- end to end: a real nginx logs to the file ----------------------------------------------------

NGINX_CONF = """\
{user}worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
  client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
  fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
  log_format filestore_hits '$request_method $status $body_bytes_sent $request_time $uri';
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location /files/ {{
      root {static};
      etag on;
      access_log {log} filestore_hits buffer=64k flush=100ms;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(prefix: Path, static: Path, log: Path) -> Iterator[int]:
    """nginx answering `/files/` from `static`, logging each answer to `log`; its port."""
    assert NGINX is not None
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # else nobody, who cannot enter tmp_path
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(
        user=user, prefix=prefix, port=port, static=static, log=log))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                             "-c", str(prefix / "nginx.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        assert proc.poll() is None, (prefix / "error.log").read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    try:
        wait_for(up)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    errors = (prefix / "error.log").read_text()
    assert "[crit]" not in errors and "[alert]" not in errors and "[emerg]" not in errors


def fetch(port: int, method: str, path: str, **headers: str) -> tuple[int, bytes, str]:
    """Status, body and ETag of one request to nginx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read(), reply.getheader("etag") or ""
    finally:
        conn.close()


@needs_nginx
def test_hits_nginx_answers_are_counted_as_filestores_own(make_server: Any,
                                                         tmp_path: Path) -> None:
    body = os.urandom(4000)
    name = "d\u00e9j\u00e0/vu one.bin"  # escaped by nginx, a space in $uri
    server = cached_server(make_server, {name: body})
    data = server.settings.data_dir
    # The static tree, as static.py links it: hard links to the very bytes.
    static = tmp_path / "static"
    (static / "files" / "d\u00e9j\u00e0").mkdir(parents=True)
    os.link(data / "cache" / name, static / "files" / name)
    (static / "files" / "plain.txt").write_bytes(b"not a cache entry")
    log = data / "hits.log"
    task, _ = started_run(server)
    try:
        wait_for(log.exists)
        before, hits_before = scrape(server), counters(server)
        accessed = last_access(server, name)
        with nginx(tmp_path / "nginx", static, log) as port:
            url = "/files/d%C3%A9j%C3%A0/vu%20one.bin"
            status, got, etag = fetch(port, "GET", url)
            assert (status, got) == (200, body)
            sent_bytes = len(got)

            def check(method: str, path: str, status: int, **headers: str) -> bytes:
                nonlocal sent_bytes
                got = fetch(port, method, path, **headers)
                assert got[0] == status, got
                sent_bytes += len(got[1])
                return got[1]

            # $uri is normalized: the same file's path.
            assert check("GET", "/files/d%C3%A9j%C3%A0/./vu%20one.bin", 200) == body
            assert check("GET", url, 206, Range="bytes=10-19") == body[10:20]
            assert check("HEAD", url, 200) == b""
            check("GET", url, 304, **{"If-None-Match": etag})
            check("GET", url, 416, Range="bytes=99999-")
            check("GET", "/files/plain.txt", 200)
            check("GET", "/files/nothing", 404)

            def counted() -> dict[Any, float] | None:
                after = scrape(server)
                return after if requests(after, "GET", 404) > requests(before, "GET", 404) else None

            after = wait_for(counted)
            # Every answer, in the request metrics, as filestore counts its own.
            for method, status, count in (("GET", 200, 3), ("GET", 206, 1), ("HEAD", 200, 1),
                                          ("GET", 304, 1), ("GET", 416, 1), ("GET", 404, 1)):
                assert requests(after, method, status) - requests(before, method, status) == count
            sent = ("filestore_http_sent_bytes_total", (("route", "files"),))
            assert after[sent] - before.get(sent, 0.0) == sent_bytes
            latency = ("filestore_http_request_duration_seconds_count",
                       (("method", "GET"), ("route", "files")))
            assert after[latency] - before.get(latency, 0.0) == 7
            # The cache entry's reads (two GETs whole, one range; not the HEAD, nor the 304),
            # as the cache's hits, with their access time written for its GC.
            wait_for(lambda: counters(server)["cache.hits"] == hits_before["cache.hits"] + 3)
            assert counters(server)["cache.hit_bytes"] == (
                hits_before.get("cache.hit_bytes", 0) + 2 * len(body) + 10)
            wait_for(lambda: last_access(server, name) > accessed)
    finally:
        task.cancel()


@needs_nginx
def test_the_reader_that_takes_over_counts_nginxs_hits(make_server: Any, tmp_path: Path) -> None:
    server = cached_server(make_server, {"x.bin": b"x" * 100})
    static = tmp_path / "static"
    (static / "files").mkdir(parents=True)
    os.link(server.settings.data_dir / "cache" / "x.bin", static / "files" / "x.bin")
    log = server.settings.data_dir / "hits.log"
    first, stopped = started_run(server)
    wait_for(log.exists)
    second, _ = started_run(server)
    try:
        with nginx(tmp_path / "nginx", static, log) as port:

            start = counters(server).get("cache.hits", 0)
            assert fetch(port, "GET", "/files/x.bin")[0] == 200
            wait_for(lambda: counters(server).get("cache.hits", 0) == start + 1)
            first.cancel()
            assert stopped.wait(timeout=10)

            def hit_counted() -> bool:
                """One more GET through nginx; whether the GETs since the takeover made
                a hit (the one before it is counted already)."""
                assert fetch(port, "GET", "/files/x.bin")[0] == 200
                return counters(server).get("cache.hits", 0) > start + 1

            # The second opens the log from its end within a second: a GET after that counts.
            wait_for(hit_counted, interval=0.2)
    finally:
        first.cancel()
        second.cancel()
