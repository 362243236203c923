"""The admin page's charts of the last hour: sampled into the registry, drawn as inline SVG.

`sampler.py` writes a sample of the counters every `INTERVAL` seconds (one row per interval,
whichever server process comes first, kept for `KEEP` intervals); `series.py` turns the samples
into the charts' series (rates from neighbours, gaps where no sample was taken); `svg.py` draws
them on the server, with no script or library of any kind.
"""

from __future__ import annotations

from . import sampler
from .sampler import interval, window
from .series import Chart, Series, build
from .svg import chart_svg, section

__all__ = ["Chart", "Series", "build", "chart_svg", "interval", "sampler", "section", "window"]
