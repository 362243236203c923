"""The admin page's charts of the last hour: the samples in the registry (one per interval however
many processes race for it, an hour kept), the series taken from them (rates, gaps), the SVG
drawn from those (well-formed, labelled in words), and the page in a real Chromium moving as a
workload runs."""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, counters, wait_for

from filestore import charts
from filestore.charts import sampler
from filestore.charts.svg import scale_top, section
from filestore.registry import SqliteRegistry
from filestore.registry.migrations.samples import migration_11
from filestore.registry.samples import Sample

pytestmark = pytest.mark.timeout(60)

SVG = "{http://www.w3.org/2000/svg}"
ARTIFACTS = Path(os.environ.get("FILESTORE_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))
FAST = 0.25  # seconds between samples in the tests that run a server


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    yield registry
    registry.close()


def sample(t: float, step: float = 10.0, **fields: Any) -> Sample:
    values: dict[str, Any] = dict(
        slot=int(t // step), time=t, uploads=0, uploaded_bytes=0, sent_bytes=0, cache_bytes=0,
        cloud_bytes=0, hits=0, misses=0, backlog=0, failed=0, at_risk_bytes=0, oldest_age=None)
    values.update(fields)
    return Sample(**values)


def by_key(built: list[charts.Chart]) -> dict[str, charts.Chart]:
    return {chart.key: chart for chart in built}


# -- the samples in the registry ---------------------------------------------------------------

def test_a_sample_holds_the_counters_and_the_data_at_risk(registry: SqliteRegistry) -> None:
    with registry.transaction() as tx:
        tx.files.upsert("a/old.bin", 100, "0" * 64, "application/octet-stream", 1, 1000.0)
        tx.queue.schedule("a/old.bin", "upload", 1, "default", 1000.0, 1000.0)
        tx.files.upsert("a/done.bin", 40, "1" * 64, "application/octet-stream", 2, 1010.0)
        tx.files.mark_uploaded("a/done.bin", "default", "fs/a/done.bin", "e", 40, 1020.0)
        tx.counters.add({"cache.hits": 3, "cache.misses": 1, "cache.hit_bytes": 300,
                         "cache.remote_bytes": 70})
    assert sampler.take(registry, 1030.0, sent=12345)
    [row] = registry.read.samples.since(0)
    assert row == Sample(slot=103, time=1030.0, uploads=1, uploaded_bytes=40, sent_bytes=12345,
                         cache_bytes=300, cloud_bytes=70, hits=3, misses=1, backlog=1, failed=0,
                         at_risk_bytes=100, oldest_age=30.0)


def _race(barrier: threading.Barrier, won: list[bool], registry: SqliteRegistry,
          now: float) -> None:
    barrier.wait()
    won.append(sampler.take(registry, now, None))


def test_an_interval_has_one_row_whoever_writes_it(registry: SqliteRegistry,
                                                   tmp_path: Path) -> None:
    """Two connections (as two processes have) taking the same interval at once: one row, one
    winner; and the insert itself keeps the first row of an interval."""
    other = SqliteRegistry(tmp_path / "registry.sqlite3")
    try:
        for slot in range(20):
            barrier, won = threading.Barrier(2, timeout=10), []
            threads = [threading.Thread(target=_race, args=(barrier, won, reg, slot * 10 + offset))
                       for reg, offset in ((registry, 0.1), (other, 0.2))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            assert sorted(won) == [False, True], slot
        rows = registry.read.samples.since(-1)
        assert [row.slot for row in rows] == list(range(20))
        with registry.transaction() as tx:
            assert not tx.samples.add(sample(5.5, uploads=99), keep_after=-1)
        assert registry.read.samples.since(-1)[0].uploads == 0
    finally:
        other.close()


def _take_slots(path: str, start: Any, slots: int, won: Any) -> None:
    """A process of its own: take each interval as soon as `start` lets it (see below)."""
    registry = SqliteRegistry(Path(path))
    try:
        for slot in range(slots):
            start.wait(timeout=20)
            if sampler.take(registry, slot * 10.0 + 1, None):
                won.put(slot)
    finally:
        registry.close()


def test_two_processes_racing_write_one_row_per_interval(registry: SqliteRegistry,
                                                        tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, won = context.Barrier(2), context.Queue()
    slots = 15
    workers = [context.Process(target=_take_slots,
                               args=(str(tmp_path / "registry.sqlite3"), start, slots, won))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=45)
        assert worker.exitcode == 0
    winners = [won.get(timeout=5) for _ in range(slots)]
    assert sorted(winners) == list(range(slots))  # each interval won once, by one of them
    assert won.empty()
    assert [row.slot for row in registry.read.samples.since(-1)] == list(range(slots))


def test_rows_older_than_the_window_go_with_the_next(registry: SqliteRegistry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler, "INTERVAL", 1.0)
    for second in range(sampler.KEEP + 40):
        assert sampler.take(registry, second + 0.5, None)
    rows = registry.read.samples.since(-1)
    assert len(rows) == sampler.KEEP
    assert rows[0].slot == 40 and rows[-1].slot == sampler.KEEP + 39


def test_the_migration_runs_again_harmlessly(registry: SqliteRegistry) -> None:
    import sqlite_utils

    sampler.take(registry, 100.0, None)
    db = sqlite_utils.Database(registry.path)
    migration_11(db)  # a crash before user_version moved runs it again
    db.close()
    assert len(registry.read.samples.since(0)) == 1


# -- series ------------------------------------------------------------------------------------

def test_rates_come_from_neighbours_and_gaps_break_them() -> None:
    rows = [sample(0, uploads=0, uploaded_bytes=0), sample(10, uploads=5, uploaded_bytes=1000),
            sample(20, uploads=7, uploaded_bytes=1500),
            # the server was down from 20 to 60
            sample(60, uploads=9, uploaded_bytes=1600), sample(70, uploads=19, uploaded_bytes=1600)]
    built = by_key(charts.build(rows, 70, 10.0, 3600))
    assert built["uploads"].series[0].points == ((10, 0.5), (20, 0.2), (60, None), (70, 1.0))
    assert built["uploaded_bytes"].series[0].values() == [100.0, 50.0, 0.0]
    # A level is drawn at each sample, with a break at the gap.
    levels = [sample(0, backlog=3), sample(10, backlog=4), sample(50, backlog=1)]
    backlog = by_key(charts.build(levels, 50, 10.0, 3600))["backlog"].series[0]
    assert backlog.points == ((0, 3.0), (10, 4.0), (30, None), (50, 1.0))


def test_a_counter_that_went_down_or_is_missing_gives_no_rate() -> None:
    rows = [sample(0, uploads=10, sent_bytes=None), sample(10, uploads=4, sent_bytes=None),
            sample(20, uploads=6, sent_bytes=500)]
    built = by_key(charts.build(rows, 20, 10.0, 3600))
    assert built["uploads"].series[0].points == ((10, None), (20, 0.2))
    assert built["served"].series[0].values() == []


def test_the_hit_ratio_is_per_interval_and_none_without_reads() -> None:
    rows = [sample(0), sample(10, hits=3, misses=1), sample(20, hits=3, misses=1),
            sample(30, hits=3, misses=5)]
    ratio = by_key(charts.build(rows, 30, 10.0, 3600))["hit_ratio"].series[0]
    assert ratio.points == ((10, 0.75), (20, None), (30, 0.0))


def test_nothing_at_risk_is_an_age_of_zero_and_samples_outside_the_window_are_left_out() -> None:
    rows = [sample(-4000, oldest_age=999.0), sample(0, oldest_age=None),
            sample(10, oldest_age=12.5)]
    age = by_key(charts.build(rows, 10, 10.0, 3600))["at_risk"]
    assert age.series[0].points == ((0, 0.0), (10, 12.5)) and age.samples == 2


# -- the SVG -----------------------------------------------------------------------------------

def _parse(html: str) -> ET.Element:
    return ET.fromstring(html)  # well-formed XML, or this raises


def _svg(root: ET.Element, key: str) -> ET.Element:
    [figure] = [f for f in root.iter("figure") if f.get("data-chart") == key]
    svg = figure.find(f"{SVG}svg")
    assert svg is not None
    return svg


def test_a_chart_is_valid_svg_with_its_points_and_a_summary_in_words() -> None:
    rows = [sample(t, uploads=t // 10 * 3, sent_bytes=t * 1000, cache_bytes=t * 200,
                   cloud_bytes=t * 10) for t in range(0, 101, 10)]
    root = _parse(section(charts.build(rows, 100, 10.0, 3600), 10.0, 3600))
    svg = _svg(root, "uploads")
    assert svg.get("role") == "img"
    label = svg.get("aria-label")
    assert label == "Uploads per second, the last hour: now 0.3/s, max 0.3/s."
    title = svg.find(f"{SVG}title")
    assert title is not None and title.text == label
    [line] = svg.iter(f"{SVG}polyline")
    assert len(line.get("points", "").split()) == 10  # 11 samples: 10 rates
    assert svg.get("data-points") == "10" and svg.get("data-last") == "0.3"
    ticks = [t.text for t in svg.iter(f"{SVG}text")]
    assert ticks == ["0.5/s", "0/s", "−60 min", "−45 min", "−30 min", "−15 min", "now"]

    # Three series on one chart: each its own dash pattern and marker, named in the legend.
    served = _svg(root, "served")
    dashes = {line.get("data-series"): line.get("stroke-dasharray")
              for line in served.iter(f"{SVG}polyline")}
    assert dashes == {"all /files/ responses": None, "from the cache": "7 4",
                      "downloaded from the cloud": "2 3"}
    markers = {m.tag.removeprefix(SVG) for m in served if "marker" in m.get("class", "")}
    assert markers == {"circle", "rect", "path"}
    [figure] = [f for f in root.iter("figure") if f.get("data-chart") == "served"]
    legend = [span.text for span in figure.iter("span")]
    assert legend == ["all /files/ responses", "from the cache", "downloaded from the cloud"]
    assert "from the cache now 200 B/s, max 200 B/s" in (served.get("aria-label") or "")


def test_fewer_than_two_samples_is_collecting_and_a_gap_breaks_the_line() -> None:
    root = _parse(section(charts.build([sample(0)], 0, 10.0, 3600), 10.0, 3600))
    for figure in root.iter("figure"):
        svg = figure.find(f"{SVG}svg")
        assert svg is not None
        assert [t.text for t in svg.iter(f"{SVG}text")][-1] == "collecting…"
        assert "collecting the first samples (one every 10 s)" in (svg.get("aria-label") or "")
        assert not list(svg.iter(f"{SVG}polyline"))

    rows = [sample(t, uploads=t) for t in (0, 10, 20, 30, 100, 110, 120)]
    root = _parse(section(charts.build(rows, 120, 10.0, 3600), 10.0, 3600))
    lines = list(_svg(root, "uploads").iter(f"{SVG}polyline"))
    assert [len(line.get("points", "").split()) for line in lines] == [3, 2]
    # With samples but no reads, the hit ratio says so instead of drawing nothing silently.
    ratio = _svg(root, "hit_ratio")
    assert [t.text for t in ratio.iter(f"{SVG}text")][-1] == "no reads of cloud files yet"


def test_a_lone_point_is_drawn_as_its_marker() -> None:
    rows = [sample(0), sample(10, hits=1), sample(20, hits=1), sample(30, hits=2)]
    svg = _svg(_parse(section(charts.build(rows, 30, 10.0, 3600), 10.0, 3600)), "hit_ratio")
    assert not list(svg.iter(f"{SVG}polyline"))
    assert len(list(svg.iter(f"{SVG}circle"))) == 2


@pytest.mark.parametrize(("most", "unit", "top"), [
    (0.0, "per_second", 1.0), (3.2, "per_second", 5.0), (10.0, "per_second", 10.0),
    (0.07, "per_second", 0.1), (0.4, "ratio", 1.0), (45.0, "seconds", 60.0),
    (1500.0, "bytes_per_second", 2048.0), (700 * 1024.0, "bytes_per_second", 1024.0 ** 2),
])
def test_the_y_axis_tops_at_a_round_number(most: float, unit: str, top: float) -> None:
    assert scale_top(most, unit) == pytest.approx(top)


# -- the page ----------------------------------------------------------------------------------

def test_the_charts_need_the_admin_and_answer_html_and_json(
        monkeypatch: pytest.MonkeyPatch, make_server: Any) -> None:
    monkeypatch.setattr(sampler, "INTERVAL", FAST)
    server: LiveServer = make_server()
    anonymous = httpx.Client(base_url=server.url, timeout=10)
    assert anonymous.get("/admin/charts").status_code == 401
    assert anonymous.get("/admin/api/charts").status_code == 401
    client = server.client()
    wait_for(lambda: len(server.store.registry.read.samples.since(0)) >= 3, timeout=10)
    page = client.get("/admin/charts")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    root = _parse(page.text)
    assert [f.get("data-chart") for f in root.iter("figure")] == [
        "uploads", "uploaded_bytes", "served", "hit_ratio", "backlog", "at_risk"]
    assert root.get("data-every") == str(round(FAST * 1000))
    answer = client.get("/admin/api/charts").json()
    assert answer["interval"] == FAST and answer["window"] == FAST * sampler.KEEP
    uploads = answer["charts"][0]
    assert uploads["key"] == "uploads" and uploads["series"][0]["points"]


def _attr(page: Any, key: str, name: str) -> str | None:
    value = page.locator(f'figure[data-chart="{key}"] svg.chart-svg').get_attribute(name)
    return value if value is None else str(value)


@pytest.mark.timeout(90)
def test_the_charts_move_with_a_workload(monkeypatch: pytest.MonkeyPatch, browser: Any,
                                         make_server: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(sampler, "INTERVAL", FAST)
    monkeypatch.setattr(sampler, "KEEP", 24)  # a 6 s window: the test's few seconds fill it
    server: LiveServer = make_server(upload__delay="0s")  # the embedded file:// remote
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(server.url + "/admin")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/admin")

    # Idle: every chart but the hit ratio (no reads yet) has points, and no uploads.
    idle = ["uploads", "uploaded_bytes", "served", "backlog", "at_risk"]
    wait_for(lambda: all(int(_attr(page, k, "data-points") or 0) > 0 for k in idle),
             timeout=15, interval=0.05)
    assert _attr(page, "uploads", "data-max") == "0"

    # A workload: files PUT, uploaded at once, then read back (from the cache they moved to).
    client = server.client()
    bodies = {f"w/{i}.bin": os.urandom(64_000) for i in range(12)}
    for path, body in bodies.items():
        assert client.put(f"/files/{path}", content=body).status_code == 201
    wait_for(lambda: counters(server).get("uploads.done") == len(bodies), timeout=20)
    wait_for(lambda: float(_attr(page, "uploads", "data-max") or 0) > 0
             and float(_attr(page, "uploaded_bytes", "data-max") or 0) > 0,
             timeout=20, interval=0.05)
    for path, body in bodies.items():
        assert client.get(f"/files/{path}").content == body
    wait_for(lambda: float(_attr(page, "served", "data-max") or 0) > 0
             and int(_attr(page, "hit_ratio", "data-points") or 0) > 0,
             timeout=20, interval=0.05)
    # And back down once the burst is over: the latest rate is 0 again, the peak stays drawn.
    wait_for(lambda: _attr(page, "uploads", "data-last") == "0", timeout=20, interval=0.05)
    label = _attr(page, "uploads", "aria-label") or ""
    assert re.fullmatch(r"Uploads per second, the last 6 s: now 0/s, max [\d.,]+/s\.",
                        label), label
    assert page.locator('figure[data-chart="served"] .legend li').all_inner_texts() == [
        "all /files/ responses", "from the cache", "downloaded from the cloud"]
    page.locator("#charts").screenshot(path=str(tmp_path / "admin-charts.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#charts").screenshot(path=str(ARTIFACTS / "admin-charts.png"))
    assert (tmp_path / "admin-charts.png").stat().st_size > 10_000

    # On a phone: the charts stack, nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.locator("figure.chart").count() == 6
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()
