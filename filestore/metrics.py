"""`/metrics` in Prometheus' text format, right with any number of server processes.

Two kinds of figures:

- **What the registry already counts** (files, cache entries and bytes, hits, misses, fills,
  evictions, integrity failures, queue depth by op and state, uploads done and their bytes, the
  oldest due queue entry, the data at risk) is read from its `counters` table and a few index
  seeks at scrape time by `RegistryCollector`, with the disk's free space and the local checks
  of `/readyz`.
  Those counters are kept in the transactions that change them (or flushed each second by the
  cache), so every process sees the same figures, for free, and they never drift.
- **Per-request figures** (requests by route, method and status, latency, bytes in and out) exist
  only in the process that served the request. With `server.workers > 1` each worker is a
  process, so these use prometheus-client's multiprocess mode: each process writes its values to
  mmapped files in `PROMETHEUS_MULTIPROC_DIR` (here `data_dir/metrics/`, unless the environment
  names one), and a scrape, answered by whichever worker, adds up every process's files. The
  mode must be chosen before any metric exists in the process, so `prometheus_client` is
  imported only by `start()`. Stale files (of processes of earlier runs) are removed by the
  first process to start on the data directory, under its start lock, before any process of
  this run can have written one.

The request middleware's cost on the hot path (a 1 KiB GET) is measured in the README.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .datadir import DataDir
from .errors import RegistryUnavailable
from .registry import CACHE_EVENTS, LOCATIONS, remote_counter_names
from .stats import at_risk

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .store import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets (seconds): a local hit is ~0.1-1 ms, a cold read from the cloud tens of ms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)
# Cache events that only ever grow: exported as counters. `hit_bytes`/`remote_bytes` are bytes.
_CACHE_COUNTERS = {name: f"filestore_cache_{name}" for name in CACHE_EVENTS}


class _Instruments:
    """The per-process metrics of this process (one set, however many apps it builds)."""

    def __init__(self, directory: Path) -> None:
        from prometheus_client import Counter, Histogram, values

        # An earlier import of prometheus_client (a test's parser, say) chose single-process
        # values; metrics look the class up when created, so choosing again here suffices.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.directory = directory
        # The request middlewares of this process (one per app built), flushed together.
        self.pending: list[RequestMetrics] = []
        labels = ("route", "method", "status")
        self.requests = Counter("filestore_http_requests", "HTTP requests answered", labels)
        self.latency = Histogram("filestore_http_request_duration_seconds",
                                 "Time to answer, until the last byte was handed to the server",
                                 ("route", "method"), buckets=BUCKETS)
        self.bytes_in = Counter("filestore_http_received_bytes",
                                "Request body bytes received", ("route",))
        self.bytes_out = Counter("filestore_http_sent_bytes",
                                 "Response body bytes sent", ("route",))
        # For the upload workers to call (see `remote_attempt`).
        self.remote_attempts = Counter("filestore_remote_attempts",
                                       "Uploads and remote deletes tried", ("op", "remote"))
        self.remote_failures = Counter("filestore_remote_failures",
                                       "Uploads and remote deletes that failed", ("op", "remote"))


_instruments: _Instruments | None = None


def _clear_stale(data_dir: Path, directory: Path) -> None:
    """Remove earlier runs' files if no process uses the data directory. Under the start lock:
    a process joins (and only then writes metrics) under it too, so none of this run's files
    can be removed here."""
    datadir = DataDir(data_dir)
    datadir.create()
    start = datadir.start_lock()
    try:
        probe = DataDir(data_dir)
        alone = probe.join()
        probe.leave()
        if alone:
            for stale in directory.glob("*.db"):
                stale.unlink(missing_ok=True)
    finally:
        os.close(start)


def start(data_dir: Path) -> _Instruments:
    """This process's metrics, in multiprocess mode; the first call chooses the directory."""
    global _instruments
    if _instruments is None:
        configured = os.environ.get(MULTIPROC_ENV)
        directory = Path(configured) if configured else data_dir / "metrics"
        directory.mkdir(parents=True, exist_ok=True)
        if not configured:
            _clear_stale(data_dir, directory)
        os.environ[MULTIPROC_ENV] = str(directory)
        _instruments = _Instruments(directory)
    return _instruments


def remote_attempt(op: str, remote: str, ok: bool) -> None:
    """Count one upload or remote delete (`op`) on `remote`; a no-op outside a server."""
    if _instruments is not None:
        _instruments.remote_attempts.labels(op, remote).inc()
        # Created with the first attempt, so a failure ratio has its series from the start.
        failures = _instruments.remote_failures.labels(op, remote)
        if not ok:
            failures.inc()


# Where an app names its requests' route itself (a scope key), for paths that do not say it:
# the S3 endpoint's (s3api/app.py) are buckets and keys, `/files/x` there the bucket "files".
ROUTE = "filestore.route"


def route_of(path: str) -> str:
    """A bounded label for a URL path (never the path itself: that would be one series each)."""
    if path.startswith("/files/"):
        return "files" if len(path) > 7 else "list"
    if path.startswith("/admin/api/"):
        return "admin_api"
    if path == "/admin" or path.startswith("/admin/"):
        return "admin"
    if path in ("/healthz", "/readyz", "/metrics"):
        return path[1:]
    if path.startswith("/_cluster/"):
        return "cluster"  # other nodes reading the files this one holds (cluster/endpoint.py)
    return "other"


class RequestMetrics:
    """ASGI middleware counting each request by route, method and status, its latency and its
    body bytes both ways. A method outside the usual ones is labelled "other".

    prometheus-client's multiprocess values cost about 35 µs for these four updates (a lock
    and an mmap write each), a fifth of a small GET. So requests are added up in plain dicts
    here and `flush()`ed into the metrics once a second (and before a scrape this process
    answers): a request costs a few dict updates, a scrape may miss the last second.
    """

    _METHODS = frozenset(("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"))

    def __init__(self, app: ASGIApp, instruments: _Instruments, access_log: bool = False) -> None:
        self.app = app
        self.m = instruments
        self.access_log = access_log
        if access_log:
            _access_logger()
        instruments.pending.append(self)
        self._requests: dict[tuple[str, str, int], int] = {}
        # (route, method) -> [count per bucket (+Inf last)..., sum of seconds]
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._bytes_out: dict[str, int] = {}
        self._bytes_in: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def counted_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        try:
            # A GET or HEAD has no body worth counting: its receive goes unwrapped.
            await self.app(scope, receive if method in ("GET", "HEAD") else counted_receive,
                           counted_send)
        finally:
            self.count(scope, scope.get(ROUTE) or route_of(scope["path"]), status, received,
                       sent, started)

    def count(self, scope: Scope, route: str, status: int, received: int, sent: int,
              started: float, times: int = 1) -> None:
        """Count one request answered with `status` (0: the connection broke, or the answer
        failed, before any status went out), `received` and `sent` body bytes, begun at
        `started` (`time.perf_counter()`). For a caller that knows these without having its
        `send` wrapped (`app.FastReads`' file GETs). `times`: as many alike (nginx's hits)."""
        method = scope["method"]
        if method not in self._METHODS:
            method = "other"
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + times
        elapsed = time.perf_counter() - started
        slot = self._latency.get((route, method))
        if slot is None:
            slot = self._latency[(route, method)] = [0.0] * (len(BUCKETS) + 2)
        slot[bisect.bisect_left(BUCKETS, elapsed)] += times
        slot[-1] += elapsed * times
        if sent:
            self._bytes_out[route] = self._bytes_out.get(route, 0) + sent * times
        if received:
            self._bytes_in[route] = self._bytes_in.get(route, 0) + received
        if self.access_log:
            _log_access(scope, status, received, sent, elapsed)

    def flush(self) -> None:
        """Move what was added up into the (multiprocess) metrics."""
        requests, self._requests = self._requests, {}
        latency, self._latency = self._latency, {}
        bytes_out, self._bytes_out = self._bytes_out, {}
        bytes_in, self._bytes_in = self._bytes_in, {}
        m = self.m
        for (route, method, status), count in requests.items():
            m.requests.labels(route, method, str(status)).inc(count)
        for (route, method), slot in latency.items():
            child = m.latency.labels(route, method)
            # Histogram has no bulk observe; its per-bucket values (non-cumulative, as
            # `observe` keeps them) and its sum take the counts directly. tests/test_metrics.py
            # checks the buckets that come out.
            for index, observed in enumerate(slot[:-1]):
                if observed:
                    child._buckets[index].inc(observed)
            child._sum.inc(slot[-1])
        for route, count in bytes_out.items():
            m.bytes_out.labels(route).inc(count)
        for route, count in bytes_in.items():
            m.bytes_in.labels(route).inc(count)


def _access_logger() -> logging.Logger:
    """`filestore.access`, writing bare JSON lines to stdout (set up once per process)."""
    logger = logging.getLogger("filestore.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _log_access(scope: Scope, status: int, received: int, sent: int, elapsed: float) -> None:
    client = scope.get("client")
    logging.getLogger("filestore.access").info(json.dumps({
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": client[0] if client else None,
        "method": scope["method"],
        "path": scope["path"],  # never the query: a signed URL's sig is a credential
        "status": status,
        "bytes_in": received,
        "bytes_out": sent,
        "seconds": round(elapsed, 6),
    }, ensure_ascii=False))


def flush() -> None:
    """Flush every middleware of this process (on the event loop's thread, like the requests)."""
    if _instruments is not None:
        for middleware in _instruments.pending:
            middleware.flush()


# The counts of requests another server answered for filestore (`count_outside`).
_outside: RequestMetrics | None = None


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of `_outside`, which counts requests and never dispatches one."""


def count_outside(method: str, status: int, sent: int, seconds: float,
                  route: str = "files", times: int = 1) -> None:
    """Count one request that another server answered in filestore's name (nginx, from
    DATA/static: hitlog.py), with `status`, `sent` body bytes and `seconds` to answer, as
    `RequestMetrics.count` counts filestore's own. On the event loop's thread; a no-op
    outside a server (`start` not called)."""
    global _outside
    if _instruments is None:
        return
    if _outside is None:
        _outside = RequestMetrics(_no_app, _instruments)  # flushed with the others (`flush`)
    _outside.count({"method": method}, route, status, 0, sent, time.perf_counter() - seconds,
                   times)


async def flush_every(interval: float = 1.0) -> None:
    """The lifespan's task: keep the metrics at most `interval` behind the requests."""
    import anyio

    try:
        while True:
            await anyio.sleep(interval)
            flush()
    finally:
        flush()  # at shutdown: the last second too


class RegistryCollector:
    """The registry's counters as metrics, read at each scrape (one small query, plus an index
    seek per queue op for the oldest due entry and two for the data at risk), the disk's free
    space, and `ready`: the local checks of `/readyz`, run by `metrics()` before the scrape."""

    def __init__(self, store: Store, ready: Mapping[str, bool] | None = None) -> None:
        self.store = store
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        # The registry's server away: the scrape still answers, with the figures that need no
        # registry, `filestore_ready{check="registry"} 0` among them (an alert's cue).
        with contextlib.suppress(RegistryUnavailable):
            yield from self._registry_figures()
        yield from self._disk()

    def _registry_figures(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        store = self.store
        counters = store.registry.read.counters.all()
        files = GaugeMetricFamily("filestore_files", "Files by where their bytes are",
                                  labels=("location",))
        size = GaugeMetricFamily("filestore_files_bytes", "Bytes of files by where they are",
                                 labels=("location",))
        for location in LOCATIONS:
            files.add_metric((location,), counters.get(f"files.{location}", 0))
            size.add_metric((location,), counters.get(f"bytes.{location}", 0))
        yield files
        yield size
        yield GaugeMetricFamily("filestore_cache_entries", "Entries in the cache area",
                                value=counters.get("cache.entries", 0))
        yield GaugeMetricFamily("filestore_cache_bytes", "Bytes in the cache area",
                                value=counters.get("cache.bytes", 0))
        yield GaugeMetricFamily("filestore_cache_max_bytes", "cache.max_size",
                                value=store.settings.cache.max_size)
        yield GaugeMetricFamily("filestore_cache_pinned_entries",
                                "Pinned cache entries (never evicted)",
                                value=counters.get("cache.pinned.entries", 0))
        yield GaugeMetricFamily("filestore_cache_pinned_bytes",
                                "Bytes of pinned cache entries (within cache.max_size)",
                                value=counters.get("cache.pinned.bytes", 0))
        for name, metric in _CACHE_COUNTERS.items():
            yield CounterMetricFamily(metric, f"Cache {name.replace('_', ' ')}",
                                      value=counters.get(f"cache.{name}", 0))
        depth = GaugeMetricFamily("filestore_queue_entries",
                                  "Queued uploads and remote deletes by state",
                                  labels=("op", "state"))
        for op in ("upload", "delete"):
            for state in ("pending", "failed"):
                depth.add_metric((op, state), counters.get(f"queue.{op}.{state}", 0))
        yield depth
        yield CounterMetricFamily("filestore_uploads", "Uploads done (verified)",
                                  value=counters.get("uploads.done", 0))
        yield CounterMetricFamily("filestore_uploaded_bytes", "Bytes uploaded (verified)",
                                  value=counters.get("uploads.bytes", 0))
        yield from self._by_remote(counters)
        oldest = GaugeMetricFamily(
            "filestore_queue_oldest_due_seconds",
            "How long the longest-waiting pending entry has been due (0: none is overdue)",
            labels=("op",))
        now = time.time()
        for op, due in self._oldest_due():
            oldest.add_metric((op,), max(0.0, now - due) if due is not None else 0.0)
        yield oldest
        yield from self._at_risk(counters, now)

    def _at_risk(self, counters: dict[str, int], now: float) -> Iterator[Metric]:
        """The data at risk (see `stats.at_risk`); the ages are 0 when there is none."""
        from prometheus_client.core import GaugeMetricFamily

        risk = at_risk(self.store.registry.read, counters, now)
        yield GaugeMetricFamily(
            "filestore_unprotected_files",
            "Files meant for the cloud (upload queued, pending or failed) with no verified "
            "copy there yet", value=risk["files"])
        yield GaugeMetricFamily("filestore_unprotected_bytes", "Bytes of those files",
                                value=risk["bytes"])
        yield GaugeMetricFamily(
            "filestore_unprotected_oldest_seconds",
            "Since the oldest of those files was written (a re-PUT starts it again; 0: none)",
            value=risk["oldest_seconds"] or 0.0)
        yield GaugeMetricFamily(
            "filestore_failed_upload_oldest_seconds",
            "Since the longest-failed upload failed (0: no upload failed)",
            value=risk["failed_oldest_seconds"] or 0.0)

    def _disk(self) -> Iterator[Metric]:
        """The data directory's free space and its floors, and the local readiness checks."""
        from prometheus_client.core import GaugeMetricFamily

        store = self.store
        yield GaugeMetricFamily("filestore_disk_free_bytes",
                                "Free bytes on the data directory's disk",
                                value=store.local.free_bytes())
        yield GaugeMetricFamily("filestore_disk_min_free_bytes",
                                "storage.min_free: below it every PUT gets 507",
                                value=store.settings.storage.min_free)
        yield GaugeMetricFamily("filestore_cache_min_free_bytes",
                                "cache.min_free: the cache evicts to keep this much free",
                                value=store.settings.cache.min_free)
        if self.ready is not None:
            ready = GaugeMetricFamily(
                "filestore_ready", "The local checks of /readyz at this scrape (1: passed)",
                labels=("check",))
            for check, ok in sorted(self.ready.items()):
                ready.add_metric((check,), 1.0 if ok else 0.0)
            yield ready

    def _by_remote(self, counters: dict[str, int]) -> Iterator[Metric]:
        """Per configured remote (storage plans): what it holds, and what went up to it."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "files": GaugeMetricFamily("filestore_remote_files",
                                       "Files in the cloud, by the remote holding them",
                                       labels=("remote",)),
            "bytes": GaugeMetricFamily("filestore_remote_files_bytes",
                                       "Bytes of files in the cloud, by remote",
                                       labels=("remote",)),
            "uploads": CounterMetricFamily("filestore_remote_uploads",
                                           "Uploads done (verified), by remote",
                                           labels=("remote",)),
            "uploaded_bytes": CounterMetricFamily("filestore_remote_uploaded_bytes",
                                                  "Bytes uploaded (verified), by remote",
                                                  labels=("remote",)),
        }
        for remote in self.store.settings.named_remotes():
            names = remote_counter_names(remote)._asdict()
            for field, family in families.items():
                family.add_metric((remote,), counters.get(names[field], 0))
        yield from families.values()

    def _oldest_due(self) -> Iterable[tuple[str, float | None]]:
        for op in ("upload", "delete"):
            yield op, self.store.registry.read.queue.oldest_due(op)


def exposition(store: Store, ready: Mapping[str, bool] | None = None) -> bytes:
    """Every process's request metrics and the registry's figures, in the text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    instruments = _instruments
    registry = CollectorRegistry()
    if instruments is not None:
        MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(instruments.directory))
    registry.register(RegistryCollector(store, ready))
    return generate_latest(registry)


async def metrics(request: Request) -> Response:
    import anyio

    # (Not at the top: the queue's workers import this module.)
    from .health import local_readiness
    from .service import service_of

    flush()  # this process's last requests too
    store = service_of(request.app.state).store
    ready = await local_readiness(store)
    body = await anyio.to_thread.run_sync(exposition, store, ready)
    return Response(body, media_type=CONTENT_TYPE)
