"""The hits nginx answered itself (`server.static_hits`), counted as if filestore had answered them.

With `static_hits` nginx answers public warm hits of `/files/PATH` from DATA/static (static.py)
without asking filestore. Those answers must still be counted: in the request metrics, as every
request filestore answers is (metrics.py), and, for a cache entry, as a cache hit, whose access
time is what lets the cache's GC evict the coldest entries first (cache/gc.py). A round trip to
filestore per request is what `static_hits` saves, so nginx only tells: its access log for that
location goes to a unix datagram socket, DATA/hits.sock, one datagram a request, in nginx's
syslog framing (deploy/nginx.conf):

    log_format filestore_hits '$request_method $status $body_bytes_sent $request_time $uri';
    access_log syslog:server=unix:DATA/hits.sock,nohostname,tag=filestore filestore_hits;

which arrives as `<190>Dec  7 18:03:53 filestore: GET 200 11 0.000 /files/a b \\xC3\\xA9.txt`.
nginx writes the bytes of a variable below 0x20, `"`, `\\` and from 0x7f on as `\\xXX`; `$uri`
is decoded and normalized, and may hold spaces (so it comes last). `parse` reads one datagram:
the file's path is what follows `/files/`, unescaped, UTF-8, passed through `paths.normalize`;
a datagram that is not such a line, or whose path `normalize` refuses, is dropped, never raised.

The contract:
- One process of the data directory receives (several may serve it, `server.workers`): the one
  holding `flock(LOCK_EX)` on DATA/hits.lock, taken without blocking and held for the process's
  life. The winner unlinks the socket a killed receiver left (no live process can own it: it
  would hold the lock) and binds a new one, mode 0660 (nginx's worker user is in filestore's
  group, docs/deploy.md); the others try again every `ELECT_SECONDS`, so when the receiver
  dies another binds within a second or so. nginx keeps its datagram socket connected: its
  first line to a dead receiver fails (`[error] send() failed`, the line lost) and it connects
  anew for the next one, reaching the new receiver; a line while none is bound (a takeover's
  second, filestore stopped) is lost too, with `[alert] connect() failed` (nginx 1.22).
- Every line is counted in this process's request metrics at once (`metrics.count_outside`:
  route "files", its method and status, `$body_bytes_sent`, `$request_time`), whatever its
  status: 200, 206, 304, 416, a HEAD. A line costs a few dict updates, as a request does.
- A GET answered 200 or 206 is also a read of the path: reads are gathered in a `Batch`, a dict
  by path (at most `MAX_PATHS` of them, however many datagrams arrive: a full batch is applied
  before more are read, while the kernel's queue holds what it can), applied every
  `BATCH_SECONDS`. Applying stats each path of the batch once, in a worker thread; a path whose
  bytes are in the cache area is a cache hit, counted with `Usage.hit` as reads.py counts one
  filestore serves (a HEAD reads no bytes and is none), and the cache writes it with its next
  flush of usage, a second or so later. A file of files/ (local, not cached) has no access time.
- `run` never ends but by cancellation; on its way out it applies what it gathered, so the
  cache's last flush (`Service.serving`) writes it. A crash loses the last second, as for the
  hits filestore serves itself.

nginx drops a line when the socket's queue is full (`[warn] send() to syslog failed`), and Linux
queues only `net.unix.max_dgram_qlen` datagrams per socket (systemd sets 512, the kernel's
default is 10): the receiver drains the queue at each wakeup of the event loop, so a loop too
busy to read in time loses statistics, never answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anyio

from . import logs, metrics
from .config import Settings
from .errors import BadPath
from .paths import normalize

if TYPE_CHECKING:
    from .local import LocalStore
    from .service import Service

log = logging.getLogger("filestore")

SOCKET_NAME = "hits.sock"
LOCK_NAME = "hits.lock"
SOCKET_MODE = 0o660
# A process that is not the receiver tries to become it this often (and a receiver whose
# socket failed binds again after as long).
ELECT_SECONDS = 1.0
# Reads of cache entries are applied this often.
BATCH_SECONDS = 0.5
# At most this many paths wait in a batch; a full one is applied before more datagrams are read.
MAX_PATHS = 4096
# A datagram longer than this is dropped: its path would be, being longer than
# `paths.MAX_PATH_BYTES` even escaped 4 to 1 (`\xXX` per byte).
MAX_DATAGRAM = 8192
# At most this many datagrams are read per wakeup before the event loop runs its other tasks.
MAX_PER_WAKEUP = 256

# `<PRI>Mmm dd hh:mm:ss [hostname ]tag: METHOD STATUS BYTES SECONDS /files/...`: nginx's syslog
# framing (a hostname only without `nohostname`; a tag is letters, digits and "_"), then the
# log format. Everything nginx writes is printable ASCII, the bytes of `$uri` escaped.
_LINE = re.compile(
    r"<\d{1,3}>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?:[!-~]{1,255} )?\w{1,32}: "
    r"([A-Z_-]{1,32}) (\d{3}) (\d{1,19}) (\d{1,9}(?:\.\d{1,6})?) /files/([ -~]+)\n?")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


class Hit(NamedTuple):
    """One answer nginx gave, as its log line says it (`parse`)."""

    method: str
    status: int
    sent: int  # body bytes sent ($body_bytes_sent)
    seconds: float  # to answer ($request_time: whole milliseconds, cut down)
    path: str  # the file's, normalized (`paths.normalize`)

    @property
    def reads(self) -> bool:
        """Whether the answer read the file's bytes: a cache hit if they are the cache's."""
        return self.method == "GET" and self.status in (200, 206)


def parse(datagram: bytes) -> Hit | None:
    """The hit one of nginx's datagrams tells, or None for anything else (never raises)."""
    try:
        line = datagram.decode("ascii")
    except UnicodeDecodeError:
        return None
    match = _LINE.fullmatch(line)
    if match is None:
        return None
    method, status, sent, seconds, escaped = match.groups()
    raw = unescape(escaped)
    if raw is None:
        return None
    try:
        path = normalize(raw)
    except BadPath:
        return None
    return Hit(method, int(status), int(sent), float(seconds), path)


def unescape(text: str) -> str | None:
    """`text` with nginx's `\\xXX` escapes made bytes again, as UTF-8; None if it is not
    (a `\\` that starts no escape: nginx escapes `\\` itself, so none comes unescaped)."""
    if "\\" not in text:
        return text
    first, *rest = text.split("\\")
    raw = bytearray(first.encode("ascii"))
    for part in rest:
        if part[:1] != "x" or not _HEX2.fullmatch(part[1:3]):
            return None
        raw.append(int(part[1:3], 16))
        raw += part[3:].encode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Batch:
    """The reads gathered since the batch was last taken: per path, how many GETs read it
    and their body bytes. At most `max_paths` paths (`add` says when it is full)."""

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        self.max_paths = max_paths
        self._reads: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def add(self, hit: Hit) -> bool:
        """Gather a read of `hit.path`; False (nothing gathered) if that needs a path more
        than the batch may hold."""
        counts = self._reads.get(hit.path)
        if counts is None:
            if len(self._reads) >= self.max_paths:
                return False
            self._reads[hit.path] = [1, hit.sent]
        else:
            counts[0] += 1
            counts[1] += hit.sent
        return True

    def take(self) -> dict[str, list[int]]:
        """What was gathered ({path: [reads, bytes]}); the batch starts empty again."""
        reads, self._reads = self._reads, {}
        return reads


def cache_entries(local: LocalStore, paths: list[str]) -> list[str]:
    """Those of `paths` whose bytes are in the cache area (one stat each; in a worker
    thread). A name that leads outside the data directory is none."""
    found = []
    for path in paths:
        try:
            if local.cached_path_of(path).is_file():
                found.append(path)
        except (BadPath, OSError):
            pass
    return found


async def apply(service: Service, reads: dict[str, list[int]]) -> int:
    """Count the reads of cache entries among `reads` as the cache's hits (`Usage.hit`, as
    for a hit filestore serves); how many paths were cache entries."""
    if not reads:
        return 0
    found = await anyio.to_thread.run_sync(cache_entries, service.store.local, list(reads))
    usage = service.read_through.usage
    for path in found:
        count, sent = reads[path]
        usage.hit(path, sent)
        if count > 1:
            usage.count("hits", count - 1)
    return len(found)


class Receiver:
    """DATA/hits.sock, bound by one process of the data directory at a time: the one
    holding DATA/hits.lock (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.socket_path = data_dir / SOCKET_NAME
        self.lock_path = data_dir / LOCK_NAME
        self.sock: socket.socket | None = None
        self._lock: int | None = None

    @property
    def bound(self) -> bool:
        return self.sock is not None

    def elect(self) -> bool:
        """Become the receiver if no process is (bind the socket); whether this one is.
        Raises OSError if it won but could not bind (then it holds nothing)."""
        if self.sock is not None:
            return True
        if self._lock is None:
            self._lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process receives
        try:
            self.sock = self._bind()
        except BaseException:
            self.close()
            raise
        return True

    def _bind(self) -> socket.socket:
        path = str(self.socket_path)
        with contextlib.suppress(FileNotFoundError):
            # Holding the lock, no live process owns it: a killed receiver's. Anything but a
            # socket is no socket filestore left, and stays (the bind then fails, said).
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
            os.chmod(path, SOCKET_MODE)
        except BaseException:
            sock.close()
            raise
        return sock

    def receive(self, buffer: bytearray) -> bytes | None:
        """The next datagram (b"" for one too long to be a hit's), or None if none waits."""
        assert self.sock is not None
        while True:
            try:
                # MSG_TRUNC: the datagram's real length, larger than the buffer if cut.
                length = self.sock.recv_into(buffer, len(buffer), socket.MSG_TRUNC)
            except InterruptedError:
                continue
            except BlockingIOError:
                return None
            return bytes(memoryview(buffer)[:length]) if length < len(buffer) else b""

    def release(self) -> None:
        """Stop receiving: unlink the socket (before the lock goes, so never a successor's)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)


class Counting:
    """What the receiver does with each datagram: count its hit in the request metrics at
    once, gather its read in `batch`, and `apply` the batch every `BATCH_SECONDS` (and when
    full)."""

    def __init__(self, service: Service, batch: Batch | None = None) -> None:
        self.service = service
        self.batch = batch if batch is not None else Batch()
        self._failing = logs.Failing(log, "counting nginx's hits")

    async def take_in(self, datagram: bytes) -> Hit | None:
        """Count the hit `datagram` tells, if it is one (else None)."""
        hit = parse(datagram)
        if hit is None:
            return None
        metrics.count_outside(hit.method, hit.status, hit.sent, hit.seconds)
        if hit.reads and not self.batch.add(hit):
            # Full: apply it now, reading no more meanwhile (the kernel's queue waits).
            await self.apply()
            self.batch.add(hit)
        return hit

    async def apply(self) -> None:
        """Apply the batch (`apply`); a failure is said once and the next round tries again
        (the batch is lost: statistics, never data)."""
        try:
            await apply(self.service, self.batch.take())
        except Exception as exc:  # a worker thread refused, say
            self._failing.failed(exc)
        else:
            self._failing.ok()

    async def apply_every(self, interval: float = BATCH_SECONDS) -> None:
        """Apply the batch every `interval`, for the process's life."""
        while True:
            await anyio.sleep(interval)
            await self.apply()

    async def receive(self, receiver: Receiver) -> None:
        """Read the bound `receiver`'s datagrams as they come, until cancelled or the socket
        fails (OSError)."""
        assert receiver.sock is not None
        buffer = bytearray(MAX_DATAGRAM)
        while True:
            await anyio.wait_readable(receiver.sock)
            for _ in range(MAX_PER_WAKEUP):
                datagram = receiver.receive(buffer)
                if datagram is None:
                    break
                await self.take_in(datagram)


async def run(service: Service, settings: Settings) -> None:
    """Receive nginx's hits at DATA/hits.sock while this process is the one receiver, and
    count them (see the module docstring); runs until cancelled."""
    receiver = Receiver(settings.data_dir)
    counting = Counting(service)
    binding = logs.Failing(log, f"receiving nginx's hits at {receiver.socket_path}")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(counting.apply_every)
            while True:
                try:
                    if receiver.elect():
                        binding.ok()
                        log.info("receiving nginx's hits at %s", receiver.socket_path)
                        await counting.receive(receiver)
                except OSError as exc:  # could not bind, or the socket failed: again soon
                    receiver.release()
                    binding.failed(exc)
                await anyio.sleep(ELECT_SECONDS)
    finally:
        receiver.close()
        with anyio.CancelScope(shield=True):
            await counting.apply()
