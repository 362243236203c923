"""A chart as inline SVG, drawn on the server: axes, lines, a legend and a summary in words.

No script and no library: plain SVG elements with presentation attributes, so the admin page's
strict Content-Security-Policy (own scripts and styles only, nothing inline) lets it through, and
it shows with JavaScript off. Readable without colour: each series of a chart has its own dash
pattern and marker shape, named in a text legend, and the chart says what it shows in words
(`role="img"`, `aria-label` and `<title>`: "Uploads per second, the last hour: now 3.2/s,
max 10/s"). The y axis starts at 0 and is labelled at its bottom and top; the time axis is
labelled from the window's start to "now". A gap in a series (no sample) breaks its line; a
point with no neighbour is drawn as its marker alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from ..stats import age_text, size_text
from .series import Chart, Point, Series

WIDTH, HEIGHT = 400, 150
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 10, 22  # margins: the y labels left, the time labels below
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
TICKS = 4  # time ticks: the window in quarters
# Per series, in order: a dash pattern and a marker shape, so none depends on its colour.
DASHES = ("", "7 4", "2 3")
MARKERS = ("circle", "square", "diamond")


def chart_svg(chart: Chart, interval: float) -> str:
    """One chart: a `<figure>` with its title and legend, and the SVG."""
    summary = describe(chart, interval)
    legend = "".join(
        f'<li>{_swatch(i)}<span>{escape(series.label)}</span></li>'
        for i, series in enumerate(chart.series))
    return (
        f'<figure class="chart" data-chart="{escape(chart.key)}">'
        f'<figcaption class="chart-title">{escape(chart.title)}</figcaption>'
        + _svg(chart, summary)
        + (f'<ul class="legend">{legend}</ul>' if len(chart.series) > 1 else "")
        + "</figure>")


def section(charts: Sequence[Chart], interval: float, window: float) -> str:
    """What the page's charts section holds (and `GET /admin/charts` answers): a line on the
    sampling, and every chart. `data-every`: how often the page's script fetches it again."""
    every = round(interval * 1000)
    return (f'<div class="charts" data-every="{every}">'
            f'<p class="muted chart-note">{escape(_note(interval, window))}</p>'
            + "".join(chart_svg(c, interval) for c in charts) + "</div>")


def _note(interval: float, window: float) -> str:
    kept = "an hour" if round(window) == 3600 else _span(window)
    return (f"A sample every {_span(interval)}, kept for {kept}; every "
            "server process draws the same. A break in a line: no sample (the server was "
            "down). “All /files/ responses” counts every source: local disk, the cache and "
            "the cloud (the registry has no count of local reads of its own).")


def describe(chart: Chart, interval: float) -> str:
    """The chart in words: its title, the window, and each series' latest value and highest."""
    head = f"{chart.title}, {_window_text(chart.end - chart.start)}"
    if chart.samples < 2:
        return f"{head}: collecting the first samples (one every {_span(interval)})."
    fmt = formatter(chart.unit)
    parts = []
    for series in chart.series:
        values = series.values()
        name = f"{series.label} " if len(chart.series) > 1 else ""
        if not values:
            parts.append(f"{name}{chart.empty}")
            continue
        now = "no value" if series.last is None else fmt(series.last)
        parts.append(f"{name}now {now}, max {fmt(max(values))}")
    return f"{head}: {'; '.join(parts)}."


def _svg(chart: Chart, summary: str) -> str:
    values = [v for s in chart.series for v in s.values()]
    top = scale_top(max(values, default=0.0), chart.unit)
    fmt = formatter(chart.unit)
    points = sum(len(s.values()) for s in chart.series)
    # For scripts and tests: the first series' latest and highest values.
    first = chart.series[0] if chart.series else Series("", ())
    data = "" if first.last is None else f' data-last="{first.last:.6g}"'
    data += f' data-max="{max(first.values(), default=0.0):.6g}"'
    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(summary)}" data-points="{points}"{data} '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(summary)}</title>",
        *_axes(chart, top, fmt),
    ]
    if chart.samples < 2 or not values:
        text = "collecting…" if chart.samples < 2 else chart.empty
        parts.append(f'<text class="chart-empty" x="{LEFT + PLOT_W / 2:g}" '
                     f'y="{TOP + PLOT_H / 2:g}" text-anchor="middle">{escape(text)}</text>')
    else:
        for i, series in enumerate(chart.series):
            parts.extend(_series(i, series, chart, top))
    parts.append("</svg>")
    return "".join(parts)


def _axes(chart: Chart, top: float, fmt: Callable[[float], str]) -> list[str]:
    bottom_y, right_x = TOP + PLOT_H, LEFT + PLOT_W
    parts = [
        # The frame's grid: the top and the middle, faint; the axes, solid.
        f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{right_x}" y2="{TOP}"/>',
        f'<line class="grid" x1="{LEFT}" y1="{TOP + PLOT_H / 2:g}" x2="{right_x}" '
        f'y2="{TOP + PLOT_H / 2:g}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom_y}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{bottom_y}" x2="{right_x}" y2="{bottom_y}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">'
        f"{escape(fmt(top))}</text>",
        f'<text class="tick" x="{LEFT - 6}" y="{bottom_y}" text-anchor="end">'
        f"{escape(fmt(0.0))}</text>",
    ]
    span = chart.end - chart.start
    for k in range(TICKS + 1):
        x = LEFT + PLOT_W * k / TICKS
        anchor = "start" if k == 0 else "end" if k == TICKS else "middle"
        label = "now" if k == TICKS else f"−{_span(span * (TICKS - k) / TICKS)}"
        parts.append(f'<line class="axis" x1="{x:g}" y1="{bottom_y}" x2="{x:g}" '
                     f'y2="{bottom_y + 4}"/>')
        parts.append(f'<text class="tick" x="{x:g}" y="{HEIGHT - 4}" '
                     f'text-anchor="{anchor}">{label}</text>')
    return parts


def _series(index: int, series: Series, chart: Chart, top: float) -> list[str]:
    """A series' lines (one polyline per run of points between gaps) and markers: on a point
    with no neighbour, and on the latest point."""
    span = chart.end - chart.start or 1.0

    def xy(point: Point) -> tuple[float, float]:
        t, v = point
        assert v is not None
        x = LEFT + PLOT_W * min(max((t - chart.start) / span, 0.0), 1.0)
        y = TOP + PLOT_H * (1 - min(max(v / top, 0.0), 1.0))
        return round(x, 1), round(y, 1)

    runs: list[list[tuple[float, float]]] = [[]]
    for point in series.points:
        if point[1] is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(xy(point))
    dash = DASHES[index % len(DASHES)]
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    css = f"s{index % len(DASHES)}"
    label = escape(series.label)
    parts = []
    for run in runs:
        if len(run) > 1:
            coords = " ".join(f"{x:g},{y:g}" for x, y in run)
            parts.append(f'<polyline class="line {css}" data-series="{label}" fill="none" '
                         f'points="{coords}"{dashed}/>')
        elif run:
            parts.append(_marker(index, *run[0]))
    if series.last is not None and len(runs[-1]) > 1:
        parts.append(_marker(index, *runs[-1][-1]))
    return parts


def _marker(index: int, x: float, y: float) -> str:
    shape, css = MARKERS[index % len(MARKERS)], f"marker s{index % len(MARKERS)}"
    if shape == "circle":
        return f'<circle class="{css}" cx="{x:g}" cy="{y:g}" r="3"/>'
    if shape == "square":
        return f'<rect class="{css}" x="{x - 3:g}" y="{y - 3:g}" width="6" height="6"/>'
    return (f'<path class="{css}" d="M{x:g} {y - 4:g} L{x + 4:g} {y:g} L{x:g} {y + 4:g} '
            f'L{x - 4:g} {y:g} Z"/>')


def _swatch(index: int) -> str:
    """The legend's sample of a series: its dash pattern and marker, in a small SVG."""
    dash = DASHES[index % len(DASHES)]
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<svg class="swatch" viewBox="0 0 30 10" aria-hidden="true" '
            f'xmlns="http://www.w3.org/2000/svg"><line class="line s{index % len(DASHES)}" '
            f'x1="1" y1="5" x2="29" y2="5"{dashed}/>{_marker(index, 15, 5)}</svg>')


# -- numbers as people read them -----------------------------------------------------------------

def formatter(unit: str) -> Callable[[float], str]:
    """How a value of `unit` reads: "3.2/s", "1.5 MiB/s", "87%", "1,234", "12 min"."""
    if unit == "per_second":
        return lambda v: f"{number_text(v)}/s"
    if unit == "bytes_per_second":
        return lambda v: f"{size_text(round(v))}/s"
    if unit == "ratio":
        return lambda v: f"{v * 100:.0f}%"
    if unit == "seconds":
        return age_text
    return lambda v: f"{round(v):,}"


def number_text(value: float) -> str:
    """A rate as people read it: 0, 0.05, 3.2, 12.5, 1,234."""
    if value >= 100:
        return f"{value:,.0f}"
    text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def scale_top(most: float, unit: str) -> float:
    """The top of the y axis: a round number at or above `most` (1, 2, 5 times a power of ten;
    of 1024 for bytes; minutes and hours for seconds); 100% for a ratio."""
    if unit == "ratio":
        return 1.0
    if most <= 0:
        return 1.0 if unit != "seconds" else 60.0
    if unit == "seconds":
        for step in (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                     86400):
            if most <= step:
                return float(step)
        return _round_up(most / 86400) * 86400
    if unit == "bytes_per_second" and most >= 1024:
        power = 1024.0 ** min(math.floor(math.log(most, 1024)), 5)
        # 1, 2, 5, ... 500 of a unit, then 1 of the next (1024, not "1,000.0 KiB").
        top = _round_up(most / power)
        return (1024.0 if top > 500 else top) * power
    return _round_up(most)


def _round_up(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten at or above `value`."""
    exponent = math.floor(math.log10(value)) if value > 0 else 0
    for mantissa in (1, 2, 5, 10):
        top = mantissa * 10.0 ** exponent
        if top >= value * (1 - 1e-9):
            return top
    return 10.0 ** (exponent + 1)


def _span(seconds: float) -> str:
    """A span of time for labels: 72 s, 45 min, 2.5 h."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _window_text(seconds: float) -> str:
    """"the last hour", or "the last 72 s"."""
    return "the last hour" if round(seconds) == 3600 else f"the last {_span(seconds)}"
