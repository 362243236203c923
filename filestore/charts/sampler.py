"""Every `INTERVAL` seconds, one sample of the statistics into the registry (a server's task).

Every server process runs `run`, and each wakes at the same interval boundaries; the first to
write an interval's row wins (the row is keyed by the interval's number, see
`registry/samples.py`), the others find it there and go back to sleep. So with any number of
workers there is one sample per interval, and every worker draws the same charts. The row is
written with the counters read in the same transaction, and the rows older than the window
(`KEEP` intervals: an hour) go with it.

What a sample holds (`registry.samples.Sample`), and from where:
- the registry's counters: uploads done and their bytes, bytes served from the cache and
  downloaded from the cloud, cache hits and misses, the upload backlog and failures, the bytes
  at risk; and the age of the oldest file at risk (`stats.at_risk`, one index seek);
- the body bytes of every `/files/` response, whatever the source, from the HTTP metrics every
  process keeps (`metrics.py`, added up over the processes as a scrape does). The registry has
  no counter of bytes served from local disk; local reads are the rest of this figure. None
  where the metrics are not kept (a service run outside the HTTP app).
"""

from __future__ import annotations

import logging
import os
import time

import anyio

from .. import logs, metrics
from ..errors import RegistryUnavailable
from ..registry import Registry
from ..registry.samples import Sample
from ..stats import at_risk

log = logging.getLogger("filestore")

# Seconds between samples. A module attribute, not a setting: a test sets a short one before it
# starts a server (the charts and the page's refresh follow it).
INTERVAL = 10.0
KEEP = 360  # samples kept, and drawn: an hour at the default interval
_SENT = "filestore_http_sent_bytes"  # metrics.py's counter of response body bytes, by route


def interval() -> float:
    """The interval in force (read at each use, so a test's change takes)."""
    return INTERVAL


def window() -> float:
    """The seconds the charts cover: `KEEP` intervals."""
    return KEEP * INTERVAL


def files_sent() -> int | None:
    """The body bytes of every `/files/` response so far, added up over the server processes
    (prometheus-client's multiprocess files, read as a scrape reads them); None when this
    process keeps no metrics."""
    directory = os.environ.get(metrics.MULTIPROC_ENV)
    if not directory:
        return None
    # Here, not at the top: metrics.start() must choose the multiprocess mode first.
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    collected = CollectorRegistry()
    MultiProcessCollector(collected, path=directory)  # type: ignore[no-untyped-call]
    total = 0.0
    for family in collected.collect():
        if family.name == _SENT:
            total += sum(s.value for s in family.samples
                         if s.name == f"{_SENT}_total" and s.labels.get("route") == "files")
    return int(total)


def take(registry: Registry, now: float, sent: int | None) -> bool:
    """Write the sample of the interval `now` falls in, unless a process did already; whether
    this call wrote it. Blocking: run it in a thread."""
    step = interval()
    slot = int(now // step)
    with registry.transaction() as tx:
        if tx.samples.has(slot):
            return False
        counters = tx.counters.all()
        risk = at_risk(tx, counters, now)
        sample = Sample(
            slot=slot, time=now,
            uploads=counters.get("uploads.done", 0),
            uploaded_bytes=counters.get("uploads.bytes", 0),
            sent_bytes=sent,
            cache_bytes=counters.get("cache.hit_bytes", 0),
            cloud_bytes=counters.get("cache.remote_bytes", 0),
            hits=counters.get("cache.hits", 0),
            misses=counters.get("cache.misses", 0),
            backlog=counters.get("queue.upload.pending", 0),
            failed=counters.get("queue.upload.failed", 0),
            at_risk_bytes=risk["bytes"],
            oldest_age=risk["oldest_seconds"],
        )
        return tx.samples.add(sample, keep_after=now - KEEP * step)


async def run(registry: Registry) -> None:
    """Sample at every interval boundary, forever (a server's background task). A failed
    sample (a locked or full registry) is logged and leaves a gap in the charts; the loop goes
    on. The registry's server away is one warning per outage, and one line when it is back."""
    away = logs.Failing(log, "charts: taking the sample")
    while True:
        step = interval()
        await anyio.sleep(step - time.time() % step)
        now = time.time()
        try:
            # Another process may have been first (a primary-key lookup, no write lock).
            if not registry.read.samples.has(int(now // step)):
                sent = await anyio.to_thread.run_sync(files_sent)
                await anyio.to_thread.run_sync(take, registry, now, sent)
        except RegistryUnavailable as exc:
            away.failed(exc)
        except Exception:
            log.exception("taking the charts' sample failed; the next one is due in %.0f s",
                          step)
        else:
            away.ok()
