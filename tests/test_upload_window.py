"""`upload.hours`: windows of local time, the queue outside and inside them, and what it says.

The window's questions take the time as an argument, and the queue's workers ask their `clock`:
so no test waits for an hour of the day. Server tests set windows relative to the real time
(one that opens in two hours is closed now), or give the workers a clock of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import queue_row, uploaded, wait_for
from test_admin import sign_in

from filestore.config import load_settings
from filestore.errors import ConfigError
from filestore.stats import report
from filestore.upload_window import UploadWindow, window_of
from filestore.values import parse_hours

pytestmark = pytest.mark.timeout(60)


def at(clock: str, day: int = 10) -> float:
    """A moment of local time on a day in June 2024 (no daylight-saving change near it)."""
    hour, minute = map(int, clock.split(":"))
    return datetime(2024, 6, day, hour, minute).timestamp()


def hhmm(moment: float) -> str:
    return time.strftime("%H:%M", time.localtime(moment))


def as_stated(moment: float) -> str:
    """How the stats name a time: its hour, with its date when that is not today's."""
    same_day = time.localtime(moment)[:3] == time.localtime()[:3]
    return hhmm(moment) if same_day else time.strftime("%Y-%m-%d %H:%M",
                                                       time.localtime(moment))


def span(start: float, end: float) -> str:
    """`upload.hours` for the local times of two moments (to the minute)."""
    return f"{hhmm(start)}-{hhmm(end)}"


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "text"), [
    ("01:00-06:00", "01:00-06:00"),
    ("1:00-6:30", "01:00-06:30"),
    ("22:00-02:00, 12:00-13:00", "22:00-02:00, 12:00-13:00"),
    (" 23:30 - 24:00 ,", "23:30-24:00"),
    (["01:00-02:00", "03:00-04:00"], "01:00-02:00, 03:00-04:00"),
    ("", ""),
])
def test_hours_are_written_one_way(given: Any, text: str) -> None:
    assert parse_hours(given) == text


@pytest.mark.parametrize(("value", "why"), [
    ("25:00-01:00", "'25:00' is not a time of day"),
    ("01:00-24:30", "'24:30' is not a time of day"),
    ("12:60-13:00", "'12:60' is not a time of day"),
    ("abc", "'abc' is not a window HH:MM-HH:MM"),
    ("01:00-06:00; 07:00-08:00", "is not a window"),
    ("03:00-03:00", "'03:00-03:00' starts where it ends"),
])
def test_bad_hours_are_one_line_config_errors(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"FILESTORE_UPLOAD__HOURS": value})
    message = caught.value.detail
    assert message.startswith(f"environment FILESTORE_UPLOAD__HOURS: upload.hours = {value!r}: "
                              'expected windows of local time like "01:00-06:00"')
    assert why in message and "\n" not in message


def test_hours_that_are_no_text_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "filestore.toml"
    config.write_text("[upload]\nhours = 6\n")
    with pytest.raises(ConfigError, match=r"upload\.hours = 6: expected windows"):
        load_settings(config, environ={})


# -- open, next opening, closing -------------------------------------------------------------

def test_a_night_window() -> None:
    window = window_of("01:00-06:00")
    assert not window.is_open(at("00:30")) and window.next_opening(at("00:30")) == at("01:00")
    assert window.is_open(at("01:00")) and window.next_opening(at("01:00")) is None
    assert window.closes_at(at("03:00")) == at("06:00")
    assert not window.is_open(at("06:00"))  # the end is the first minute outside
    assert window.next_opening(at("07:00")) == at("01:00", day=11)  # tomorrow night
    assert window.closes_at(at("07:00")) is None


def test_a_window_that_wraps_midnight() -> None:
    window = window_of("22:00-02:00")
    assert window.is_open(at("23:00")) and window.closes_at(at("23:00")) == at("02:00", day=11)
    assert window.is_open(at("01:59")) and window.closes_at(at("01:00")) == at("02:00")
    assert window.next_opening(at("12:00")) == at("22:00")


def test_several_windows() -> None:
    window = window_of("22:00-02:00, 12:00-13:00")
    assert window.next_opening(at("10:00")) == at("12:00")
    assert window.next_opening(at("13:00")) == at("22:00")
    # Windows that overlap or touch close when the last of them ends.
    assert window_of("01:00-03:00, 02:00-05:00").closes_at(at("02:30")) == at("05:00")
    assert window_of("22:00-24:00, 00:00-02:00").closes_at(at("23:00")) == at("02:00", day=11)


def test_always_and_all_day() -> None:
    for window in (window_of(""), UploadWindow()):
        assert window.always and window.is_open(at("12:00"))
        assert window.next_opening(at("12:00")) is None and window.closes_at(at("12:00")) is None
    whole_day = window_of("00:00-24:00")
    assert not whole_day.always and whole_day.is_open(at("00:00"))
    assert whole_day.closes_at(at("12:00")) is None  # it never closes


@pytest.fixture
def berlin() -> Iterator[None]:
    """Local time with a daylight-saving change: Europe/Berlin (31 March 2024, 02:00 -> 03:00)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.usefixtures("berlin")
def test_a_daylight_saving_night() -> None:
    evening = datetime(2024, 3, 30, 23, 0).timestamp()
    window = window_of("01:00-04:00")
    assert window.next_opening(evening) == datetime(2024, 3, 31, 1, 0).timestamp()
    # That night is an hour short: the window closes three hours of wall clock, two real.
    opened = window.next_opening(evening)
    assert opened is not None and window.closes_at(opened) == opened + 2 * 3600
    # A window in the hour that does not exist opens at the first time that does.
    skipped = window_of("02:30-05:00").next_opening(evening)
    assert skipped is not None and hhmm(skipped) in ("03:30", "01:30")


# -- the queue outside and inside the window -------------------------------------------------

class CountingClock:
    """The workers' clock (real time, moved by `offset`), counting how often the dispatcher
    asked: a round outside the window asks twice (whether to lease, and how long to sleep), so
    two questions after a PUT mean the round the PUT woke has decided."""

    def __init__(self, offset: float = 0.0) -> None:
        self.calls = 0
        self.offset = offset

    def __call__(self) -> float:
        self.calls += 1
        return time.time() + self.offset


def put(client: Any, path: str, body: bytes = b"bytes") -> None:
    r = client.put(f"/files/{path}", content=body)
    assert r.status_code == 201, r.text


def test_outside_the_window_nothing_goes_and_the_stats_say_until_when(
        make_server: Any, tmp_path: Path) -> None:
    now = time.time()
    opens = now + 2 * 3600
    hours = span(opens, opens + 3600)  # opens in two hours: closed now
    server = make_server(upload__delay="0s", upload__hours=hours)
    clock = server.service.workers.clock = CountingClock()
    client = server.client()
    asked = clock.calls
    put(client, "night/a.txt")
    wait_for(lambda: clock.calls >= asked + 2)  # the PUT woke the dispatcher: it decided
    assert not uploaded(server, "night/a.txt")
    assert queue_row(server, "night/a.txt")["lease_owner"] is None

    stats = client.get("/admin/api/stats").json()
    window = stats["upload_window"]
    expected = datetime.fromtimestamp(opens).replace(second=0, microsecond=0).timestamp()
    assert window["hours"] == hours and window["open"] is False and window["closes_at"] is None
    assert window["opens_at"] == expected and 0 < window["opens_in"] <= 2 * 3600
    assert f"wait until {as_stated(opens)}" in window["text"]
    assert stats["queue"]["upload"]["due"] == 1  # due, and waiting for the window
    browser, _ = sign_in(server)
    assert f"wait until {as_stated(opens)}" in browser.get("/admin").text
    browser.close()
    assert f"wait until {as_stated(opens)}" in report(stats)

    # `filestore stats`, from a shell while the server runs, says the same.
    env = {**os.environ, "FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir),
           "FILESTORE_UPLOAD__HOURS": hours}
    shown = subprocess.run([sys.executable, "-m", "filestore", "stats"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    window_line = next(line for line in shown.stdout.splitlines() if line.startswith("window"))
    assert f"wait until {as_stated(opens)}" in window_line and hours in window_line
    as_json = subprocess.run([sys.executable, "-m", "filestore", "stats", "--json"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert json.loads(as_json.stdout)["upload_window"]["opens_at"] == expected

    # Opened from the admin page, the waiting upload goes at once.
    inside = span(now - 3600, now + 3600)
    r = client.put("/admin/api/settings", json={"upload": {"hours": inside}})
    assert r.status_code == 200, r.text
    wait_for(lambda: uploaded(server, "night/a.txt"))
    window = client.get("/admin/api/stats").json()["upload_window"]
    assert window["open"] is True and window["opens_at"] is None and window["closes_at"]
    assert client.get("/admin/api/settings").json()["upload"]["hours"] == {
        "saved": True, "value": inside}
    client.close()


def test_remote_deletes_wait_for_the_window_too(make_server: Any) -> None:
    server = make_server(upload__delay="0s")
    client = server.client()
    put(client, "gone.txt")
    wait_for(lambda: uploaded(server, "gone.txt"))
    remote = server.settings.data_dir / "remote" / "gone.txt"
    assert remote.exists()
    later = time.time() + 2 * 3600
    r = client.put("/admin/api/settings", json={"upload": {"hours": span(later, later + 600)}})
    assert r.status_code == 200, r.text
    clock = server.service.workers.clock = CountingClock()
    asked = clock.calls
    assert client.delete("/files/gone.txt").status_code == 204
    wait_for(lambda: clock.calls >= asked + 2)
    assert remote.exists() and queue_row(server, "gone.txt")["op"] == "delete"
    r = client.put("/admin/api/settings", json={"upload": {"hours": ""}})
    assert r.status_code == 200, r.text
    wait_for(lambda: not remote.exists())
    client.close()


def test_the_workers_clock_decides_not_the_hour_of_the_test(make_server: Any) -> None:
    """Time is injected: the same server uploads or waits by what its clock says."""
    server = make_server(upload__delay="0s", upload__hours="01:00-02:00")
    workers = server.service.workers
    today = datetime.now().replace(second=0, microsecond=0)
    outside = datetime.combine(today.date(), datetime.min.time()) + timedelta(hours=3)
    clock = workers.clock = CountingClock(offset=outside.timestamp() - time.time())
    client = server.client()
    asked = clock.calls
    put(client, "clocked.txt")
    wait_for(lambda: clock.calls >= asked + 2)
    assert not uploaded(server, "clocked.txt")
    # An hour of the window (01:30 today), and a PUT to wake the dispatcher.
    workers.clock = CountingClock(offset=outside.timestamp() - 1.5 * 3600 - time.time())
    put(client, "wake.txt")
    wait_for(lambda: uploaded(server, "clocked.txt") and uploaded(server, "wake.txt"))
    client.close()


@pytest.mark.parametrize("hours", ["25:00-01:00", "abc", "01:00-01:00", "06:00-24:30"])
def test_bad_hours_are_a_400_from_the_settings_api(make_server: Any, hours: str) -> None:
    server = make_server()
    with server.client() as client:
        r = client.put("/admin/api/settings", json={"upload": {"hours": hours}})
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith(f"admin settings: upload.hours = {hours!r}: "
                                             "expected windows of local time")
        assert client.get("/admin/api/settings").json()["upload"]["hours"] == {
            "saved": False, "value": ""}


def test_the_settings_form_shows_the_new_keys(make_server: Any) -> None:
    server = make_server()
    browser, csrf = sign_in(server)
    page = browser.get("/admin/settings").text
    for name in ("upload.bandwidth", "upload.hours", "cache.download_bandwidth"):
        assert f'name="{name}"' in page
    form = {"csrf": csrf, "upload.hours": "01:00-06:00", "upload.bandwidth": "2MiB",
            "cache.download_bandwidth": "10MiB"}
    r = browser.post("/admin/settings", data=form)
    assert r.status_code in (200, 303), r.text
    saved = server.client().get("/admin/api/settings").json()
    assert saved["upload"]["hours"] == {"saved": True, "value": "01:00-06:00"}
    assert saved["upload"]["bandwidth"]["value"] == str(2 * 1024 * 1024)
    assert saved["cache"]["download_bandwidth"]["value"] == str(10 * 1024 * 1024)
    browser.close()
