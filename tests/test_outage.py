"""The cloud away and misbehaving, from our fault layer in front of moto (tests/faults.py).

An outage that starts while uploads drain and a download fills the cache, remote deletes that wait
one out, throttling and 5xx answers to uploads and reads, a failed multipart part, resets and
stalls mid-body and bytes corrupted on their way: retries stay bounded, errors are the right
ones, uploads resume by themselves, and no corrupt byte ever ends a clean 200.

Already covered elsewhere, and not repeated here: a store refused from the start, then back
(test_queue `test_store_outage_mid_drain_then_everything_arrives`); connections cut mid-drain
(`test_store_cut_mid_drain_then_back`); giving up after `max_attempts` on refused connections
(`test_gives_up_after_max_attempts`); 503 + Retry-After for a cold read of an unreachable store
(test_cache `test_an_unreachable_cloud_is_503_with_retry_after`); corrupt bytes at rest in the
file remote (`test_a_corrupt_remote_copy_is_never_served_as_a_clean_200`, test_cache_gc
`test_a_corrupt_file_larger_than_the_cache_never_ends_cleanly`); a follower in another process
cut mid-body (`test_a_failed_fill_elsewhere_fails_its_followers_mid_body`); what each S3 error
means (test_retry).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import counters, file_row, queue_row, registry_db, s3_overrides, uploaded, wait_for
from faults import FaultProxy
from test_cache import evict
from test_cache_gc import wait_too_large_evicted

MiB = 1024 * 1024
FAST_RETRY = {"upload__retry_base": "0.05s", "upload__retry_max": "0.2s"}


@pytest.fixture
def proxy(moto: Any) -> Iterator[FaultProxy]:
    """An HTTP-aware fault proxy in front of moto, for faults aimed at single requests."""
    fault_proxy = FaultProxy(moto.port, http=True)
    yield fault_proxy
    fault_proxy.close()


def through(proxy: FaultProxy, moto: Any, bucket: str) -> dict[str, str]:
    return {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}


def s3_body(moto: Any, bucket: str, key: str) -> bytes | None:
    s3 = moto.client()
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
    except s3.exceptions.NoSuchKey:
        return None


def queue_rows(server: Any) -> list[Any]:
    with contextlib.closing(registry_db(server)) as conn:
        return conn.execute("SELECT * FROM queue ORDER BY path").fetchall()


def leased(server: Any) -> int:
    with contextlib.closing(registry_db(server)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM queue WHERE leased_until IS NOT NULL "
                                "AND leased_until > ?", (time.time(),)).fetchone()[0])


def state(server: Any, path: str) -> str:
    row = queue_row(server, path)
    return "" if row is None else str(row["state"])


def put_uploaded(server: Any, bodies: dict[str, bytes]) -> None:
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    wait_for(lambda: all(uploaded(server, p) for p in bodies), timeout=30)


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- outages ------------------------------------------------------------------------------------


def test_outage_mid_drain_and_mid_fill_then_everything_resumes(make_server, moto, bucket, proxy):
    server = make_server(upload__delay="0s", upload__concurrency="2",
                         upload__max_attempts="1000", **FAST_RETRY,
                         **through(proxy, moto, bucket))
    cold = {"cold/big.bin": os.urandom(6 * MiB), "cold/small.bin": os.urandom(70_000)}
    put_uploaded(server, cold)
    for path in cold:
        evict(server, path)
    # Work in flight when the store goes: a fill held after its first MiB, and an upload the
    # store has stored but whose answer it holds back.
    held_fill = proxy.stall_after(MiB, method="GET", path="fs/cold/big.bin")
    held_put = proxy.stall_after(-1, method="PUT", path="fs/drain/00.bin")
    drain = {f"drain/{i:02d}.bin": os.urandom(50_000 + i) for i in range(12)}
    late = {f"late/{i}.bin": os.urandom(20_000 + i) for i in range(4)}
    with server.client() as client, client.stream("GET", "/files/cold/big.bin") as filling:
        assert filling.status_code == 200
        chunks = filling.iter_raw()
        first = next(chunks)
        for path, body in drain.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        wait_for(lambda: held_put.hits == 1 and held_fill.hits == 1)
        wait_for(lambda: counters(server)["uploads.done"] >= len(cold) + 3)  # mid-drain
        proxy.down()

        # The fill's reader is cut mid-body: never a clean end of bytes not verified.
        with pytest.raises(httpx.RemoteProtocolError):
            first += b"".join(chunks)
        assert len(first) < len(cold["cold/big.bin"])
        # Cold reads while the store is away, new or repeated: 503 with Retry-After.
        for path in cold:
            r = client.get(f"/files/{path}")
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            assert r.json()["error"] == "remote_unavailable"
        # Writes go on locally, and their uploads wait like the others.
        for path, body in late.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
            assert client.get(f"/files/{path}").content == body
        wait_for(lambda: (queue_row(server, "drain/00.bin") or {"attempts": 0})["attempts"] >= 2
                 and all((queue_row(server, p) or {"attempts": 0})["attempts"] >= 1
                         for p in late))
        # Retried with backoff, not given up, and a failed attempt holds no lease: at most the
        # attempts running right now do.
        assert counters(server)["queue.upload.failed"] == 0
        assert leased(server) <= 2
        assert "drain/00.bin" in queue_row(server, "drain/00.bin")["last_error"]

        proxy.up()
        everything = {**cold, **drain, **late}
        wait_for(lambda: all(uploaded(server, p) for p in everything), timeout=30)
        for path, body in everything.items():
            r = client.get(f"/files/{path}")
            assert r.status_code == 200 and sha(r.content) == sha(body), path
        stats = client.get("/admin/api/stats").json()

    assert queue_rows(server) == []  # nothing queued, so no lease left behind
    assert stats["queue"]["upload"]["in_flight"] == 0 and stats["queue"]["upload"]["failed"] == 0
    c = counters(server)
    assert c["files"] == c["files.remote"] == len(everything) and c["files.local"] == 0
    assert c["queue.upload.pending"] == 0 and c["queue.upload.failed"] == 0
    # drain/00 was stored twice (its first answer was lost) but recorded once: every file once.
    assert c["uploads.done"] == len(everything)
    assert c["cache.fill_errors"] >= 1 + len(cold)  # the cut fill and the 503s
    for path, body in everything.items():
        assert s3_body(moto, bucket, f"fs/{path}") == body, path
    # The cut fill left no partial entry behind.
    wait_for(lambda: list((server.settings.data_dir / "tmp").iterdir()) == [])


def test_remote_deletes_wait_out_an_outage(make_server, moto, bucket, proxy):
    server = make_server(upload__delay="0s", upload__concurrency="1",
                         upload__max_attempts="1000", **FAST_RETRY,
                         **through(proxy, moto, bucket))
    bodies = {f"del/{i}.bin": os.urandom(10_000) for i in range(3)}
    put_uploaded(server, bodies)
    proxy.down()
    with server.client() as client:
        for path in bodies:
            assert client.delete(f"/files/{path}").status_code == 204
            assert client.get(f"/files/{path}").status_code == 404  # at once, store or not
    wait_for(lambda: all((queue_row(server, p) or {"attempts": 0})["attempts"] >= 2
                         for p in bodies))
    assert all(queue_row(server, p)["op"] == "delete" for p in bodies)
    c = counters(server)
    assert c["queue.delete.pending"] == 3 and c["queue.delete.failed"] == 0
    assert leased(server) <= 1  # the attempt running now, if any: failed ones hold none
    proxy.up()
    wait_for(lambda: queue_rows(server) == [], timeout=20)
    assert moto.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    c = counters(server)
    assert c["files"] == 0 and c["cache.entries"] == 0 and c["queue.delete.pending"] == 0


# -- throttling and 5xx -------------------------------------------------------------------------


def test_throttling_and_5xx_on_uploads_are_retried_a_bounded_number_of_times(
        make_server, moto, bucket, proxy):
    server = make_server(upload__delay="0s", upload__max_attempts="3", **FAST_RETRY,
                         **through(proxy, moto, bucket))
    throttled = proxy.answer(503, "SlowDown", method="PUT", path="fs/throttled.bin", times=None)
    broken = proxy.answer(500, "InternalError", method="PUT", path="fs/broken.bin", times=None)
    passing = proxy.answer(503, "SlowDown", method="PUT", path="fs/passing.bin", times=2)
    bodies = {name: os.urandom(30_000) for name in ("throttled.bin", "broken.bin",
                                                    "passing.bin")}
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        wait_for(lambda: state(server, "throttled.bin") == state(server, "broken.bin")
                 == "failed", timeout=20)
        wait_for(lambda: uploaded(server, "passing.bin"))
        # Exactly max_attempts requests reached the store: nothing retried behind the queue's
        # back (botocore's own retries are off), and nothing after it gave up.
        assert (throttled.hits, broken.hits, passing.hits) == (3, 3, 2)
        for path, code in (("throttled.bin", "SlowDown"), ("broken.bin", "InternalError")):
            row = queue_row(server, path)
            assert row["attempts"] == 3 and code in row["last_error"], dict(row)
            assert path in row["last_error"]
            assert file_row(server, path)["location"] == "local"
            assert client.get(f"/files/{path}").content == bodies[path]  # still served
        failed = client.get("/admin/api/queue/failed").json()["items"]
        assert {item["path"] for item in failed} == {"throttled.bin", "broken.bin"}
        assert counters(server)["queue.upload.failed"] == 2

        proxy.clear()  # the store recovers; an operator retries
        r = client.post("/admin/api/queue/retry", json={"all": True})
        assert r.status_code == 200 and r.json() == {"retried": 2}
        wait_for(lambda: all(uploaded(server, p) for p in bodies), timeout=20)
    for path, body in bodies.items():
        assert s3_body(moto, bucket, f"fs/{path}") == body
    c = counters(server)
    assert c["uploads.done"] == 3 and c["queue.upload.failed"] == 0
    assert c["queue.upload.pending"] == 0


def test_a_failed_part_aborts_the_multipart_upload_and_the_retry_completes(
        make_server, moto, bucket, proxy):
    server = make_server(upload__delay="0s", remote__multipart_threshold="5MiB",
                         remote__part_size="5MiB", **FAST_RETRY, **through(proxy, moto, bucket))
    part = proxy.answer(500, "InternalError", method="PUT", path="partNumber=2", times=1)
    cut = proxy.reset_after(-1, method="PUT", path="partNumber=3", times=1)  # stored, answer lost
    body = os.urandom(12 * MiB + 3)
    with server.client() as client:
        assert client.put("/files/parts.bin", content=body).status_code == 201
    wait_for(lambda: uploaded(server, "parts.bin"), timeout=30)
    assert part.hits == 1 and cut.hits == 1
    assert sha(s3_body(moto, bucket, "fs/parts.bin") or b"") == sha(body)
    # The failed attempts were aborted, not left open to be billed.
    assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert counters(server)["uploads.done"] == 1


@pytest.mark.parametrize(("status", "code", "expected", "retry_after"), [
    pytest.param(503, "SlowDown", 503, "5", id="503-SlowDown"),
    pytest.param(500, "InternalError", 503, "5", id="500-InternalError"),
    pytest.param(403, "AccessDenied", 502, None, id="403-AccessDenied"),
])
def test_errors_on_a_cold_read_are_answered_precisely(make_server, moto, bucket, proxy, status,
                                                      code, expected, retry_after):
    server = make_server(upload__delay="0s", **through(proxy, moto, bucket))
    body = os.urandom(100_000)
    put_uploaded(server, {"r.bin": body})
    evict(server, "r.bin")
    fault = proxy.answer(status, code, method="GET", path="fs/r.bin", times=1)
    with server.client() as client:
        r = client.get("/files/r.bin")
        assert r.status_code == expected, r.text
        assert r.headers.get("retry-after") == retry_after
        assert code in r.json()["detail"]
        assert fault.hits == 1
        r = client.get("/files/r.bin")  # the store answers again
        assert r.status_code == 200 and r.content == body
    wait_for(lambda: counters(server)["cache.fill_errors"] == 1)


# -- broken bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "fault", "at", "cache_size", "counter"), [
    pytest.param(3 * MiB, "corrupt", 2 * MiB + 5, "10GiB", "cache.integrity_failures",
                 id="corrupt-fill"),
    pytest.param(100, "corrupt", 0, "10GiB", "cache.integrity_failures",
                 id="corrupt-one-block-fill"),
    pytest.param(3 * MiB, "corrupt", 3 * MiB - 1, "1MiB", "cache.integrity_failures",
                 id="corrupt-pass-through"),
    pytest.param(3 * MiB, "reset", MiB + 7, "10GiB", "cache.fill_errors", id="reset-fill"),
    pytest.param(3 * MiB, "reset", MiB + 7, "1MiB", None, id="reset-pass-through"),
])
def test_a_broken_body_from_the_store_never_ends_a_clean_200(make_server, moto, bucket, proxy,
                                                              size, fault, at, cache_size,
                                                              counter):
    server = make_server(upload__delay="0s", cache__max_size=cache_size,
                         **through(proxy, moto, bucket))
    body = os.urandom(size)
    put_uploaded(server, {"b.bin": body})
    if cache_size == "1MiB":
        wait_too_large_evicted(server)  # read straight from the cloud, kept nowhere
    else:
        evict(server, "b.bin")
    before = counters(server)
    arm = proxy.corrupt if fault == "corrupt" else proxy.reset_after
    armed = arm(at, method="GET", path="fs/b.bin", times=1)
    with server.client() as client:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), \
                client.stream("GET", "/files/b.bin") as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
        assert armed.hits == 1
        assert len(received) < size  # cut before its end, whatever the client had
        if counter is not None:
            wait_for(lambda: counters(server)[counter] == before[counter] + 1)
        tmp = server.settings.data_dir / "tmp"
        wait_for(lambda: list(tmp.iterdir()) == [])
        cached = server.settings.data_dir / "cache" / "b.bin"
        assert not cached.exists()
        r = client.get("/files/b.bin")  # the fault has passed: the next read is whole
        assert r.status_code == 200 and sha(r.content) == sha(body)
    if cache_size != "1MiB":
        wait_for(cached.exists)
        assert sha(cached.read_bytes()) == sha(body)


@pytest.mark.parametrize("after", [pytest.param(300_000, id="mid-body"),
                                   pytest.param(-1, id="before-the-answer")])
def test_a_stalled_store_fails_a_fill_after_fill_timeout(make_server, moto, bucket, proxy,
                                                         after):
    server = make_server(upload__delay="0s", cache__fill_timeout="1s",
                         **through(proxy, moto, bucket))
    body = os.urandom(2 * MiB)
    put_uploaded(server, {"s.bin": body})
    evict(server, "s.bin")
    stall = proxy.stall_after(after, method="GET", path="fs/s.bin", times=1)
    with server.client() as client:
        started = time.monotonic()
        if after < 0:
            # Nothing came before the stall: the client gets a status, not a broken body.
            r = client.get("/files/s.bin")
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            assert "stalled" in r.json()["detail"]
        else:
            with pytest.raises(httpx.RemoteProtocolError), \
                    client.stream("GET", "/files/s.bin") as r:
                assert r.status_code == 200
                b"".join(r.iter_raw())
        elapsed = time.monotonic() - started
        # fill_timeout, not botocore's 60 s read timeout nor forever.
        assert 0.9 <= elapsed < 10, elapsed
        assert stall.hits == 1
        wait_for(lambda: counters(server)["cache.fill_errors"] == 1)
        r = client.get("/files/s.bin")
        assert r.status_code == 200 and r.content == body


# -- known bugs ---------------------------------------------------------------------------------


def test_a_delete_after_an_upload_whose_answer_was_lost_removes_the_remote_copy(
        make_server, moto, bucket, proxy):
    server = make_server(upload__delay="0s", upload__retry_base="1h", upload__retry_max="1h",
                         **through(proxy, moto, bucket))
    # Twice: aiohttp repeats an idempotent request once by itself when a connection it reused
    # breaks, and that repeat must be lost as well for the queue to see the failure.
    lost = proxy.reset_after(-1, method="PUT", path="fs/lost.bin", times=2)
    with server.client() as client:
        assert client.put("/files/lost.bin", content=b"stored, answer lost").status_code == 201
        wait_for(lambda: (queue_row(server, "lost.bin") or {"attempts": 0})["attempts"] == 1)
        assert lost.hits >= 1
        assert s3_body(moto, bucket, "fs/lost.bin") == b"stored, answer lost"
        assert client.delete("/files/lost.bin").status_code == 204
    row = queue_row(server, "lost.bin")
    assert row is not None and row["op"] == "delete", "the remote copy is forgotten"
    wait_for(lambda: s3_body(moto, bucket, "fs/lost.bin") is None)
