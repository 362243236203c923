"""The charts' series, from the samples: rates from the difference of neighbours, gaps kept.

A sample holds cumulative counters, so a rate is the difference between a sample and the one
before it over the seconds between them. Two samples are neighbours when they are at most one
and a half intervals apart; past that the server was down (or not sampling), and the series
has a gap there (a point with no value), which the drawing shows as a break in the line rather
than a slope across the hours nobody measured. A counter that went down (a registry restored
from a backup) gives no rate either. Levels (the backlog, the age of the data at risk) are drawn
at each sample, broken at the same gaps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..registry.samples import Sample

# A point: (time, value); value None is a gap, where the line breaks.
Point = tuple[float, float | None]
# How far apart two samples may be, in intervals, and still be neighbours.
NEIGHBOURS = 1.5


@dataclass(frozen=True)
class Series:
    label: str  # what it is, in words: also its legend
    points: tuple[Point, ...]

    def values(self) -> list[float]:
        return [v for _, v in self.points if v is not None]

    @property
    def last(self) -> float | None:
        """The latest value, None when the latest point is a gap (or there is none)."""
        return self.points[-1][1] if self.points else None


@dataclass(frozen=True)
class Chart:
    key: str  # a name for tests and scripts: "uploads", "served", ...
    title: str  # "Uploads per second"
    unit: str  # how values read: "per_second", "bytes_per_second", "ratio", "count", "seconds"
    series: tuple[Series, ...]
    start: float  # the window drawn: [start, end]
    end: float
    samples: int  # how many samples it was built from (fewer than 2: still collecting)
    empty: str = "no data"  # what it says when no series has a value

    def public(self) -> dict[str, Any]:
        """As JSON (`GET /admin/api/charts`)."""
        return {"key": self.key, "title": self.title, "unit": self.unit,
                "series": [{"label": s.label, "points": [list(p) for p in s.points]}
                           for s in self.series]}


def build(samples: Sequence[Sample], now: float, interval: float, window: float
          ) -> list[Chart]:
    """The page's charts over the `window` seconds up to `now`, from `samples` (oldest first)
    taken every `interval` seconds."""
    start = now - window
    samples = [s for s in samples if start < s.time <= now]

    def chart(key: str, title: str, unit: str, *series: Series, empty: str = "no data"
              ) -> Chart:
        return Chart(key, title, unit, series, start, now, len(samples), empty)

    def rate(label: str, field: str) -> Series:
        return Series(label, _rates(samples, interval, field))

    return [
        chart("uploads", "Uploads per second", "per_second", rate("uploads", "uploads")),
        chart("uploaded_bytes", "Bytes uploaded per second", "bytes_per_second",
              rate("bytes uploaded", "uploaded_bytes")),
        chart("served", "Bytes served per second", "bytes_per_second",
              rate("all /files/ responses", "sent_bytes"),
              rate("from the cache", "cache_bytes"),
              rate("downloaded from the cloud", "cloud_bytes")),
        chart("hit_ratio", "Cache hit ratio", "ratio",
              Series("hit ratio", _hit_ratios(samples, interval)),
              empty="no reads of cloud files yet"),
        chart("backlog", "Upload backlog", "count",
              Series("queued", _levels(samples, interval, lambda s: s.backlog)),
              Series("failed", _levels(samples, interval, lambda s: s.failed))),
        chart("at_risk", "Age of the oldest data at risk", "seconds",
              # Nothing at risk: age 0, a value (a gap would say nobody looked).
              Series("oldest at risk", _levels(samples, interval,
                                               lambda s: s.oldest_age or 0.0))),
    ]


def _neighbours(a: Sample, b: Sample, interval: float) -> bool:
    return 0 < b.time - a.time <= NEIGHBOURS * interval


def _rates(samples: Sequence[Sample], interval: float, field: str) -> tuple[Point, ...]:
    """Per second between each sample and the one before it; a gap where they are not
    neighbours, a counter is missing or it went down."""
    points: list[Point] = []
    for a, b in itertools.pairwise(samples):
        before, after = getattr(a, field), getattr(b, field)
        value = None
        if _neighbours(a, b, interval) and before is not None and after is not None \
                and after >= before:
            value = (after - before) / (b.time - a.time)
        points.append((b.time, value))
    return tuple(points)


def _hit_ratios(samples: Sequence[Sample], interval: float) -> tuple[Point, ...]:
    """Hits over reads of uploaded files between neighbours; a gap where there were none."""
    points: list[Point] = []
    for a, b in itertools.pairwise(samples):
        hits, misses = b.hits - a.hits, b.misses - a.misses
        value = None
        if _neighbours(a, b, interval) and hits >= 0 and misses >= 0 and hits + misses:
            value = hits / (hits + misses)
        points.append((b.time, value))
    return tuple(points)


def _levels(samples: Sequence[Sample], interval: float, level: Callable[[Sample], float]
            ) -> tuple[Point, ...]:
    """A level at each sample, with a gap between samples that are not neighbours."""
    points: list[Point] = []
    for i, sample in enumerate(samples):
        if i and not _neighbours(samples[i - 1], sample, interval):
            points.append(((samples[i - 1].time + sample.time) / 2, None))
        points.append((sample.time, float(level(sample))))
    return tuple(points)
