"""The hits nginx answered itself (`server.static_hits`), counted as if filestore had answered them.

With `static_hits` nginx answers public warm hits of `/files/PATH` from DATA/static (static.py)
without asking filestore. Those answers must still be counted: in the request metrics, as every
request filestore answers is (metrics.py), and, for a cache entry, as a cache hit, whose access
time is what lets the cache's GC evict the coldest entries first (cache/gc.py). A round trip to
filestore per request is what `static_hits` saves, so nginx only tells: its access log for that
location goes to DATA/hits.log, buffered (one write per 64 KiB of lines, or per second), and
filestore reads what was appended every `BATCH_SECONDS` (deploy/nginx.conf):

    log_format filestore_hits '$request_method $status $body_bytes_sent $request_time $uri';
    access_log /srv/filestore/hits.log filestore_hits buffer=64k flush=1s;

A line reads `GET 200 11 0.000 /files/a b \\xC3\\xA9.txt`. nginx writes the bytes of a
variable below 0x20, `"`, `\\` and from 0x7f on as `\\xXX`; `$uri` is decoded and normalized,
and may hold spaces (so it comes last). `parse` reads one line: the file's path is what follows
`/files/`, unescaped, UTF-8, passed through `paths.normalize`; a line that is not such a line,
or whose path `normalize` refuses, is dropped, never raised. (A log over syslog, one datagram a
request, was measured first: a `sendto` and a wakeup per hit cost nginx two thirds of its 1 KiB
rate, bench/accel.py, and Linux's 10-datagram queue dropped lines.)

The contract:
- One process of the data directory reads (several may serve it, `server.workers`): the one
  holding `flock(LOCK_EX)` on DATA/hits.lock, taken without blocking and held for the process's
  life. It opens the log (creating it, mode 0660: nginx's master opens it as root, its workers
  inherit the descriptor) and reads from its end on: what is before was a former reader's.
  The others try again every `ELECT_SECONDS`, so when the reader dies another takes over within
  a second or so, losing what its predecessor had not read (as a crash loses the last second of
  the hits filestore serves itself).
- Every line is counted in this process's request metrics (`metrics.count_outside`: route
  "files", its method and status, `$body_bytes_sent`, `$request_time`), whatever its status:
  200, 206, 304, 416, a HEAD. A line costs a few dict updates, as a request does.
- A GET answered 200 or 206 is also a read of the path: reads are gathered in a `Batch`, a dict
  by path (at most `MAX_PATHS` of them: a full batch is applied before more lines are read),
  applied after each read of the log. Applying stats each path of the batch once, in a worker
  thread; a path whose bytes are in the cache area is a cache hit, counted with `Usage.hit` as
  reads.py counts one filestore serves (a HEAD reads no bytes and is none), and the cache writes
  it with its next flush of usage, a second or so later. A file of files/ (local, not cached)
  has no access time.
- The log stays small: once all read and past `TRUNCATE_AT`, the reader empties it
  (`ftruncate`; nginx appends, so its next write lands at the start).
- `run` never ends but by cancellation; on its way out it applies what it gathered, so the
  cache's last flush (`Service.serving`) writes it.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import re
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

LOG_NAME = "hits.log"
LOCK_NAME = "hits.lock"
# nginx's worker user is in filestore's group (docs/deploy.md); nginx's master opens it as root.
LOG_MODE = 0o660
# A process that is not the reader tries to become it this often (and a reader whose log
# failed opens it again after as long).
ELECT_SECONDS = 1.0
# The log is read, and reads of cache entries applied, this often.
BATCH_SECONDS = 0.5
# At most this many paths wait in a batch; a full one is applied before more lines are read.
MAX_PATHS = 4096
# A line longer than this is dropped: its path would be, being longer than
# `paths.MAX_PATH_BYTES` even escaped 4 to 1 (`\xXX` per byte).
MAX_LINE = 8192
# At most this much of the log is read at once, before the event loop runs its other tasks.
READ_BUDGET = 1 << 20
# The log is emptied once it is all read and holds this much.
TRUNCATE_AT = 16 << 20

# `METHOD STATUS BYTES SECONDS /files/...`: the log format, as nginx writes it to the file.
# Everything nginx writes is printable ASCII, the bytes of `$uri` escaped.
_LINE = re.compile(
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


def parse(raw_line: bytes) -> Hit | None:
    """The hit one of nginx's log lines tells, or None for anything else (never raises)."""
    try:
        line = raw_line.decode("ascii")
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

    def add(self, hit: Hit, times: int = 1) -> bool:
        """Gather `times` reads like `hit` of its path; False (nothing gathered) if that needs
        a path more than the batch may hold."""
        counts = self._reads.get(hit.path)
        if counts is None:
            if len(self._reads) >= self.max_paths:
                return False
            self._reads[hit.path] = [times, hit.sent * times]
        else:
            counts[0] += times
            counts[1] += hit.sent * times
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
    """DATA/hits.log, read by one process of the data directory at a time: the one holding
    DATA/hits.lock (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.log_path = data_dir / LOG_NAME
        self.lock_path = data_dir / LOCK_NAME
        self.fd: int | None = None
        self.offset = 0  # how far the log is read
        self._lock: int | None = None

    @property
    def bound(self) -> bool:
        return self.fd is not None

    def elect(self) -> bool:
        """Become the reader if no process is (open the log, creating it); whether this one
        is. Raises OSError if it won but could not open it (then it holds nothing)."""
        if self.fd is not None:
            return True
        if self._lock is None:
            self._lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process reads
        try:
            fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
        except BaseException:
            self.release()
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.release()
            raise OSError(f"{self.log_path} is not a regular file")
        # From its end: what is before was a former reader's, counted or lost with it.
        self.fd, self.offset = fd, os.fstat(fd).st_size
        return True

    def lines(self, budget: int = READ_BUDGET) -> list[bytes]:
        """The whole lines nginx appended since the last call (up to about `budget` bytes);
        a line longer than `MAX_LINE` comes as b"" (no hit's). The log is emptied when it is
        all read and has grown past `TRUNCATE_AT`."""
        assert self.fd is not None
        size = os.fstat(self.fd).st_size
        if size < self.offset:  # emptied by someone else: read it from its start
            self.offset = 0
        data = os.pread(self.fd, min(budget, size - self.offset), self.offset)
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) >= MAX_LINE:  # one over-long line: skip what came of it
            self.offset += len(data)
            return [b""]
        self.offset += cut
        if self.offset >= TRUNCATE_AT and self.offset == os.fstat(self.fd).st_size:
            # nginx appends (O_APPEND): its next write lands at the new end, 0. A buffer it
            # writes between the fstat and this truncation is lost: counts, never answers.
            os.ftruncate(self.fd, 0)
            self.offset = 0
        return [line if len(line) <= MAX_LINE else b"" for line in data[:cut].splitlines()]

    def release(self) -> None:
        """Stop reading (the log stays: nginx keeps writing to it)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)


class Counting:
    """What the reader does with each line: count its hit in the request metrics at once,
    gather its read in `batch`, and `apply` the batch after each read of the log (and when
    full)."""

    def __init__(self, service: Service, batch: Batch | None = None) -> None:
        self.service = service
        self.batch = batch if batch is not None else Batch()
        self._failing = logs.Failing(log, "counting nginx's hits")

    async def take_in(self, line: bytes, times: int = 1) -> Hit | None:
        """Count the hit `line` tells (`times` alike), if it is one (else None)."""
        hit = parse(line)
        if hit is None:
            return None
        metrics.count_outside(hit.method, hit.status, hit.sent, hit.seconds, times=times)
        if hit.reads and not self.batch.add(hit, times):
            # Full: apply it now, reading no more meanwhile.
            await self.apply()
            self.batch.add(hit, times)
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

    async def follow(self, receiver: Receiver, interval: float = BATCH_SECONDS) -> None:
        """Every `interval`, count the lines nginx appended to the log and apply the batch,
        until cancelled or the log fails (OSError)."""
        while True:
            await anyio.sleep(interval)
            while lines := receiver.lines():
                # Hot files repeat their lines (a whole-millisecond $request_time, most often
                # 0.000): each distinct line is parsed once, in C's Counter (half a second of
                # 1 KiB hits is some 40,000 lines, on the CPUs nginx answers them with).
                for line, times in collections.Counter(lines).items():
                    await self.take_in(line, times)
                await anyio.lowlevel.checkpoint()  # a long backlog lets the loop serve
                if len(lines) < 64:
                    break
            await self.apply()


async def run(service: Service, settings: Settings) -> None:
    """Read nginx's hits from DATA/hits.log while this process is the one reader, and count
    them (see the module docstring); runs until cancelled."""
    receiver = Receiver(settings.data_dir)
    counting = Counting(service)
    opening = logs.Failing(log, f"reading nginx's hits from {receiver.log_path}")
    try:
        while True:
            try:
                if receiver.elect():
                    opening.ok()
                    log.info("reading nginx's hits from %s", receiver.log_path)
                    await counting.follow(receiver)
            except OSError as exc:  # could not open it, or it failed: again soon
                receiver.release()
                opening.failed(exc)
            await anyio.sleep(ELECT_SECONDS)
    finally:
        receiver.close()
        with anyio.CancelScope(shield=True):
            await counting.apply()
