"""Bandwidth caps: the token bucket, uploads and cache fills at the cap, changes at run time.

Real parts throughout: moto's HTTP server through aioboto3, the embedded file remote, uvicorn.
Durations are measured around conditions waited for with deadlines, never slept for.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import queue_row, s3_overrides, uploaded, wait_for

from filestore.bandwidth import BURST_SECONDS, PacedSource, TokenBucket
from filestore.config import RemoteSettings, load_settings
from filestore.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bucket ----------------------------------------------------------------------------------

def test_the_bucket_lets_a_burst_through_then_holds_the_rate() -> None:
    clock, rate = FakeClock(), [1000]
    bucket = TokenBucket(None, 0, lambda: rate[0], clock=clock)
    burst = 1000 * BURST_SECONDS
    assert bucket.wait_left(bucket.charge(int(burst))) == 0  # a full bucket at first
    position = bucket.charge(1000)
    assert bucket.wait_left(position) == pytest.approx(1.0)
    clock.now += 0.5
    assert bucket.wait_left(position) == pytest.approx(0.5)
    rate[0] = 2000  # raised at run time: the same bytes are paid off twice as fast
    assert bucket.wait_left(position) == pytest.approx(0.25)
    rate[0] = 0  # lifted: nobody waits, nothing is charged
    assert bucket.wait_left(position) == 0 and bucket.charge(10**9) is None


def test_an_idle_bucket_fills_only_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, 0, lambda: 1000, clock=clock)
    bucket.charge(1)
    clock.now += 3600  # an hour idle earns a quarter of a second's worth, not an hour's
    position = bucket.charge(1250)
    assert bucket.wait_left(position) == pytest.approx(1.0)


def test_processes_on_one_data_directory_share_the_bucket(tmp_path: Path) -> None:
    """Two buckets on one state file (as two worker processes have) split one rate."""
    clock = FakeClock()
    state = tmp_path / "bandwidth.state"
    first = TokenBucket(state, 0, lambda: 1000, clock=clock)
    second = TokenBucket(state, 0, lambda: 1000, clock=clock)
    other_direction = TokenBucket(state, 1, lambda: 1000, clock=clock)
    first.charge(250)  # the burst
    assert first.wait_left(first.charge(1000)) == pytest.approx(1.0)
    assert second.wait_left(second.charge(1000)) == pytest.approx(2.0)  # behind the first's
    assert other_direction.wait_left(other_direction.charge(250)) == 0  # a slot of its own


def test_a_source_is_paced_in_threads_and_never_on_the_event_loop() -> None:
    bucket = TokenBucket(None, 0, lambda: MiB)
    body = os.urandom(MiB)

    async def on_the_loop() -> int:
        source = PacedSource(io.BytesIO(body), bucket)
        assert source.read() == body  # botocore hashing a body to sign it: at once
        return source.paced

    started = time.monotonic()
    assert asyncio.run(on_the_loop()) == 0
    assert time.monotonic() - started < 0.5

    source = PacedSource(io.BytesIO(body), bucket)
    started = time.monotonic()
    read = threading.Thread(target=lambda: [source.read(64 * 1024) for _ in range(16)])
    read.start()
    read.join(timeout=10)
    # 1 MiB at 1 MiB/s, less the quarter of a second a full bucket lets through.
    assert 0.6 < time.monotonic() - started < 2.0 and source.paced == MiB


def test_closing_a_source_ends_its_wait() -> None:
    """An abandoned upload's sender thread stops waiting for the bucket."""
    source = PacedSource(io.BytesIO(os.urandom(4 * MiB)), TokenBucket(None, 0, lambda: 64 * 1024))
    reader = threading.Thread(target=source.read, args=(4 * MiB,))
    reader.start()
    wait_for(lambda: source.paced)  # it read, and waits for about a minute's worth
    source.close()
    reader.join(timeout=5)
    assert not reader.is_alive()


def test_an_s3_body_is_paced_in_aiohttps_sender_threads(moto: Any, bucket: str,
                                                        tmp_path: Path) -> None:
    """What the upload cap relies on in its dependencies: aiobotocore hands a file body to
    aiohttp as it is, and aiohttp reads it in executor threads (botocore's signing pass, on the
    loop, is not paced). If that changes, single-part uploads fall back to being paced after
    they went, as multipart ones are."""
    from filestore.remote.s3 import S3Remote

    body = os.urandom(2 * MiB)
    local = tmp_path / "body.bin"
    local.write_bytes(body)
    settings = RemoteSettings(endpoint_url=moto.url, region="us-east-1",
                              access_key_id="test", secret_access_key="test")

    async def upload() -> tuple[int, float, int]:
        remote = S3Remote("default", bucket, "paced", settings)
        await remote.open()
        ticks = 0

        async def tick() -> None:  # the event loop stays free while the body is paced
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            with local.open("rb") as raw:
                source = PacedSource(raw, TokenBucket(None, 0, lambda: 2 * MiB))
                started = time.monotonic()
                await remote.put("a.bin", source.as_binary(), len(body),
                                 hashlib.sha256(body).hexdigest(), "application/octet-stream",
                                 hashlib.md5(body).hexdigest())
                return source.paced, time.monotonic() - started, ticks
        finally:
            ticker.cancel()
            await remote.close()

    paced, elapsed, ticks = asyncio.run(upload())
    assert paced == len(body), (
        "aiohttp no longer reads a request body through the file object in worker threads: "
        "filestore/bandwidth.py's PacedSource sees none of it")
    # 2 MiB at 2 MiB/s, less a full bucket: 0.75 s, with the loop ticking all along.
    assert 0.5 < elapsed < 3 and ticks > 0.5 * elapsed / 0.02, (elapsed, ticks)
    assert moto.client().get_object(Bucket=bucket, Key="paced/a.bin")["Body"].read() == body


# -- uploads -------------------------------------------------------------------------------------

UPLOAD_CASES = {
    # Ten files going up side by side, each read by aiohttp's sender threads.
    "s3-single-part": ({"upload__concurrency": "4"}, [MiB] * 10),
    # One file above the multipart threshold (its parts are read past the pacing), then a small
    # one: the worker waits the big one's bytes off before it takes the next upload.
    "s3-multipart": ({"upload__concurrency": "1", "remote__multipart_threshold": "1MiB",
                      "remote__part_size": "5MiB"}, [10 * MiB, 1024]),
    # The embedded default: the file remote copies in a worker thread.
    "file-remote": ({"upload__concurrency": "4"}, [MiB] * 10),
}


@pytest.mark.parametrize("case", UPLOAD_CASES)
def test_a_10_mib_drain_at_2_mib_per_second_takes_about_5_seconds(
        make_server: Any, moto: Any, bucket: str, case: str) -> None:
    overrides, sizes = UPLOAD_CASES[case]
    remote = {} if case == "file-remote" else s3_overrides(moto, bucket)
    server = make_server(upload__delay="0s", upload__bandwidth="2MiB", **remote, **overrides)
    paths = [f"drain/{n}.bin" for n in range(len(sizes))]
    started = time.monotonic()
    with server.client() as client:
        for path, size in zip(paths, sizes, strict=True):
            assert client.put(f"/files/{path}", content=os.urandom(size)).status_code == 201
    wait_for(lambda: all(uploaded(server, path) for path in paths), timeout=20)
    elapsed = time.monotonic() - started
    # 10 MiB at 2 MiB/s is 5 s, less a full bucket's quarter second, plus the uploads' work.
    assert 4.0 <= elapsed <= 7.0, f"{case}: {elapsed:.2f} s"


def test_a_cap_changed_on_the_admin_page_applies_to_a_running_upload(make_server: Any) -> None:
    server = make_server(upload__delay="0s", upload__bandwidth="64KiB")
    client = server.client()
    assert client.put("/files/slow.bin", content=os.urandom(2 * MiB)).status_code == 201
    # At 64 KiB/s this upload would take half a minute; it is under way when the cap goes.
    wait_for(lambda: (row := queue_row(server, "slow.bin")) is not None and row["lease_owner"])
    r = client.put("/admin/api/settings", json={"upload": {"bandwidth": "0"}})
    assert r.status_code == 200, r.text
    lifted = time.monotonic()
    wait_for(lambda: uploaded(server, "slow.bin"), timeout=10)
    assert time.monotonic() - lifted < 5
    assert client.get("/admin/api/settings").json()["upload"]["bandwidth"] == {
        "saved": True, "value": "0"}

    r = client.put("/admin/api/settings", json={"upload": {"bandwidth": "3MiB/s"},
                                                "cache": {"download_bandwidth": "1MiB"}})
    assert r.status_code == 200, r.text
    assert client.get("/admin/api/stats").json()["bandwidth"] == {"upload": 3 * MiB,
                                                                  "download": MiB}
    started = time.monotonic()
    assert client.put("/files/capped.bin", content=os.urandom(3 * MiB)).status_code == 201
    wait_for(lambda: uploaded(server, "capped.bin"), timeout=10)
    assert 0.5 < time.monotonic() - started < 4  # 3 MiB at 3 MiB/s, less a full bucket
    client.close()


# -- cache fills ---------------------------------------------------------------------------------

def test_a_cache_fill_downloads_at_the_cap(make_server: Any, moto: Any, bucket: str) -> None:
    body = os.urandom(4 * MiB)
    server = make_server(upload__delay="0s", cache__download_bandwidth="2MiB",
                         **s3_overrides(moto, bucket))
    with server.client() as client:
        assert client.put("/files/fill.bin", content=body).status_code == 201
        wait_for(lambda: uploaded(server, "fill.bin"))
        r = client.post("/admin/api/files/fill.bin/evict")
        assert r.status_code == 200 and r.json()["changed"], r.text
        started = time.monotonic()
        r = client.get("/files/fill.bin")
        elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.content == body
    # 4 MiB at 2 MiB/s is 2 s, less a full bucket's quarter second.
    assert 1.4 <= elapsed <= 4.0, f"{elapsed:.2f} s"
    wait_for((server.settings.data_dir / "cache" / "fill.bin").exists)


# -- bad values ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [("upload__bandwidth", "-1"),
                                            ("upload__bandwidth", "fast"),
                                            ("upload__bandwidth", "1KiB"),
                                            ("cache__download_bandwidth", "-2MiB")])
def test_bad_bandwidths_are_one_line_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={f"FILESTORE_{key.upper()}": value})
    message = caught.value.detail
    assert key.replace("__", ".") in message and repr(value) in message and "\n" not in message


def test_a_negative_bandwidth_in_the_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "filestore.toml"
    config.write_text("[upload]\nbandwidth = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert caught.value.detail == (
        f"{config}: upload.bandwidth = -1: expected 0 (no cap) or bytes per second like "
        '"2MiB" or "500KiB/s", at least 64KiB')


def test_bad_bandwidths_are_a_400_from_the_settings_api(make_server: Any) -> None:
    server = make_server()
    with server.client() as client:
        for changes in ({"upload": {"bandwidth": "-1"}},
                        {"cache": {"download_bandwidth": "lots"}}):
            r = client.put("/admin/api/settings", json=changes)
            assert r.status_code == 400, r.text
            section, values = next(iter(changes.items()))
            assert f"{section}.{next(iter(values))}" in r.json()["detail"]
        assert client.get("/admin/api/settings").json()["cache"] == {
            "download_bandwidth": {"saved": False, "value": "0"}}
