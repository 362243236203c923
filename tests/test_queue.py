"""The cool-down upload queue end to end: a real server, moto's S3 (or the file:// default)."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from typing import Any

import pytest
from conftest import counters, file_row, queue_row, s3_overrides, uploaded, wait_for
from faults import FaultProxy

FAST_RETRY = {"upload__retry_base": "0.05s", "upload__retry_max": "0.2s"}


def s3_body(moto: Any, bucket: str, key: str) -> bytes | None:
    try:
        return moto.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except moto.client().exceptions.NoSuchKey:
        return None


def test_upload_after_the_cool_down(make_server, moto, bucket):
    server = make_server(upload__delay="1s", **s3_overrides(moto, bucket))
    with server.client() as client:
        body = os.urandom(100_000)
        assert client.put("/files/rec/a.wav", content=body).status_code == 201
        assert file_row(server, "rec/a.wav")["location"] == "local"
        assert queue_row(server, "rec/a.wav")["op"] == "upload"
        wait_for(lambda: uploaded(server, "rec/a.wav"))
        assert s3_body(moto, bucket, "fs/rec/a.wav") == body
        row = file_row(server, "rec/a.wav")
        assert row["remote"] == "default" and row["remote_key"] == "fs/rec/a.wav"
        assert row["uploaded_at"] is not None and row["remote_etag"]
        assert queue_row(server, "rec/a.wav") is None
        # the local bytes moved to the cache area, and are still served from there
        data = server.settings.data_dir
        assert not (data / "files" / "rec" / "a.wav").exists()
        assert (data / "cache" / "rec" / "a.wav").read_bytes() == body
        r = client.get("/files/rec/a.wav")
        assert r.status_code == 200 and r.content == body
    c = counters(server)
    assert c["files.remote"] == 1 and c["files.local"] == 0 and c["uploads.done"] == 1
    assert c["queue.upload.pending"] == 0


def test_reput_during_cool_down_restarts_it_and_uploads_once(make_server, moto, bucket):
    server = make_server(upload__delay="2s", **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/x.txt", content=b"first")
        first_due = queue_row(server, "x.txt")["not_before"]
        client.put("/files/x.txt", content=b"second")
        assert queue_row(server, "x.txt")["not_before"] > first_due
        wait_for(lambda: uploaded(server, "x.txt"))
    assert s3_body(moto, bucket, "fs/x.txt") == b"second"
    assert counters(server)["uploads.done"] == 1


def test_delete_before_upload_leaves_nothing_queued(make_server, moto, bucket):
    server = make_server(upload__delay="1h", **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/gone.txt", content=b"x")
        assert queue_row(server, "gone.txt") is not None
        assert client.delete("/files/gone.txt").status_code == 204
    assert queue_row(server, "gone.txt") is None
    assert counters(server)["queue.upload.pending"] == 0
    assert moto.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_delete_after_upload_deletes_the_remote_copy(make_server, moto, bucket):
    server = make_server(upload__delay="0s", **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/d/e.txt", content=b"bye")
        wait_for(lambda: uploaded(server, "d/e.txt"))
        assert client.delete("/files/d/e.txt").status_code == 204
        assert client.get("/files/d/e.txt").status_code == 404
    wait_for(lambda: s3_body(moto, bucket, "fs/d/e.txt") is None)
    wait_for(lambda: queue_row(server, "d/e.txt") is None)
    assert not (server.settings.data_dir / "cache" / "d").exists()


def test_delete_delay_never_keeps_the_remote_copy(make_server, moto, bucket):
    server = make_server(upload__delay="0s", upload__delete_delay="never",
                         **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/keep.txt", content=b"kept")
        wait_for(lambda: uploaded(server, "keep.txt"))
        client.delete("/files/keep.txt")
    assert queue_row(server, "keep.txt") is None
    assert s3_body(moto, bucket, "fs/keep.txt") == b"kept"


def test_keep_local_mode(make_server, moto, bucket):
    server = make_server(upload__delay="0s", upload__keep_local="true",
                         **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/backup.txt", content=b"both places")
        wait_for(lambda: uploaded(server, "backup.txt"))
        assert (server.settings.data_dir / "files" / "backup.txt").read_bytes() == b"both places"
        assert not (server.settings.data_dir / "cache" / "backup.txt").exists()
        assert client.get("/files/backup.txt").content == b"both places"
    assert s3_body(moto, bucket, "fs/backup.txt") == b"both places"


def test_paused_uploads_keep_queueing(make_server, moto, bucket):
    server = make_server(upload__delay="0s", upload__enabled="false",
                         **s3_overrides(moto, bucket))
    with server.client() as client:
        for i in range(3):
            client.put(f"/files/p{i}", content=b"x")
    assert counters(server)["queue.upload.pending"] == 3
    assert file_row(server, "p0")["location"] == "local"
    assert queue_row(server, "p0")["attempts"] == 0


def test_multipart_upload(make_server, moto, bucket):
    server = make_server(upload__delay="0s", remote__multipart_threshold="5MiB",
                         remote__part_size="5MiB", **s3_overrides(moto, bucket))
    body = os.urandom(12 * 1024 * 1024 + 17)  # three parts, the last one short
    with server.client() as client:
        client.put("/files/big.bin", content=body)
        wait_for(lambda: uploaded(server, "big.bin"), timeout=30)
    assert hashlib.sha256(s3_body(moto, bucket, "fs/big.bin")).digest() == \
        hashlib.sha256(body).digest()
    assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None


def test_store_outage_mid_drain_then_everything_arrives(make_server, moto, bucket):
    proxy = FaultProxy(moto.port)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        proxy.down()  # the store is away from the start: every connection is refused
        server = make_server(upload__delay="0s", upload__concurrency="2",
                             upload__max_attempts="1000", **FAST_RETRY, **overrides)
        bodies = {f"drain/{i:02d}.bin": os.urandom(1000 + i) for i in range(12)}
        with server.client() as client:
            for path, body in bodies.items():
                assert client.put(f"/files/{path}", content=body).status_code == 201

        def retried() -> bool:
            rows = [queue_row(server, p) for p in bodies]
            return all(r is not None and r["attempts"] >= 2 for r in rows)

        wait_for(retried, timeout=30)  # backoff is visible in attempts, nothing failed for good
        assert counters(server)["queue.upload.failed"] == 0
        assert "Could not connect" in queue_row(server, "drain/00.bin")["last_error"]
        proxy.up()
        wait_for(lambda: all(uploaded(server, p) for p in bodies), timeout=30)
        for path, body in bodies.items():
            assert s3_body(moto, bucket, f"fs/{path}") == body
        assert counters(server)["queue.upload.pending"] == 0
    finally:
        proxy.close()


def test_missing_bucket_fails_at_once_with_a_clear_error(make_server, moto, bucket):
    overrides = s3_overrides(moto, "no-such-bucket-here")
    server = make_server(upload__delay="0s", **FAST_RETRY, **overrides)
    with server.client() as client:
        client.put("/files/a.txt", content=b"x")
        wait_for(lambda: (queue_row(server, "a.txt") or {"state": ""})["state"] == "failed")
    row = queue_row(server, "a.txt")
    assert row["attempts"] == 1
    assert "NoSuchBucket" in row["last_error"]
    assert file_row(server, "a.txt")["location"] == "local"


def test_gives_up_after_max_attempts(make_server, moto, bucket):
    proxy = FaultProxy(moto.port)
    proxy.down()
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__delay="0s", upload__max_attempts="3", **FAST_RETRY,
                             **overrides)
        with server.client() as client:
            client.put("/files/f.txt", content=b"x")
        wait_for(lambda: (queue_row(server, "f.txt") or {"state": ""})["state"] == "failed",
                 timeout=30)
        assert queue_row(server, "f.txt")["attempts"] == 3
    finally:
        proxy.close()


def test_default_remote_is_a_folder_in_the_data_dir(make_server):
    server = make_server(upload__delay="0s")
    with server.client() as client:
        client.put("/files/local/x.txt", content=b"to the folder")
        wait_for(lambda: uploaded(server, "local/x.txt"))
        remote_file = server.settings.data_dir / "remote" / "local" / "x.txt"
        assert remote_file.read_bytes() == b"to the folder"
        assert client.get("/files/local/x.txt").content == b"to the folder"
        client.delete("/files/local/x.txt")
    wait_for(lambda: not remote_file.exists())


@pytest.mark.parametrize("keep_local", ["false", "true"])
def test_reput_after_upload_uploads_again(make_server, moto, bucket, keep_local):
    server = make_server(upload__delay="0s", upload__keep_local=keep_local,
                         **s3_overrides(moto, bucket))
    with server.client() as client:
        client.put("/files/v.txt", content=b"v1")
        wait_for(lambda: uploaded(server, "v.txt"))
        client.put("/files/v.txt", content=b"v2")
        assert client.get("/files/v.txt").content == b"v2"
        wait_for(lambda: uploaded(server, "v.txt") and counters(server)["uploads.done"] == 2)
        assert client.get("/files/v.txt").content == b"v2"
    assert s3_body(moto, bucket, "fs/v.txt") == b"v2"
    cached = server.settings.data_dir / "cache" / "v.txt"
    if keep_local == "false":
        assert cached.read_bytes() == b"v2"
    assert counters(server)["files"] == 1


def test_secrets_never_in_errors_or_repr(make_server, moto):
    overrides = s3_overrides(moto, "no-such-bucket-here")
    overrides["remote__secret_access_key"] = "SUPERSECRETVALUE"
    server = make_server(upload__delay="0s", **overrides)
    with server.client() as client:
        client.put("/files/s.txt", content=b"x")
    wait_for(lambda: (queue_row(server, "s.txt") or {"state": ""})["state"] == "failed")
    assert "SUPERSECRETVALUE" not in queue_row(server, "s.txt")["last_error"]
    remote = server.service.remotes["default"]
    assert "SUPERSECRETVALUE" not in repr(remote) + remote.display_url
    assert "SUPERSECRETVALUE" not in repr(server.settings)




def test_two_processes_on_one_data_dir_never_upload_twice(make_server, moto, bucket, tmp_path):
    overrides = {"upload__delay": "0s", "upload__enabled": "false", **s3_overrides(moto, bucket)}
    data_dir = tmp_path / "shared"
    first = make_server(data_dir, **overrides)
    with first.client() as client:
        for i in range(40):
            client.put(f"/files/two/{i:02d}.bin", content=os.urandom(2000))
    first.stop()
    # Both start draining the same 40 entries at once.
    overrides["upload__enabled"] = "true"
    servers = [make_server(data_dir, **overrides) for _ in range(2)]
    wait_for(lambda: counters(servers[0])["files.remote"] == 40, timeout=60)
    wait_for(lambda: counters(servers[0])["queue.upload.pending"] == 0)
    # each entry was recorded uploaded exactly once: no entry was leased by both processes
    assert counters(servers[0])["uploads.done"] == 40


def test_rows_that_ask_for_a_gone_version_are_settled_not_spun(make_server, tmp_path):
    """A row can outlive what it names (a crash between rename and commit re-records the file
    under a new version). The worker must settle it, not lease it again and again."""
    data_dir = tmp_path / "data"
    paused = {"upload__delay": "0s", "upload__enabled": "false"}
    server = make_server(data_dir, **paused)
    with server.client() as client:
        for name in ("old-version", "no-file", "no-bytes"):
            client.put(f"/files/{name}", content=name.encode())
    server.stop()
    with sqlite3.connect(data_dir / "registry.sqlite3") as conn:
        conn.execute("UPDATE queue SET version = version - 1000 WHERE path = 'old-version'")
        conn.execute("DELETE FROM files WHERE path = 'no-file'")
    (data_dir / "files" / "no-bytes").unlink()

    server = make_server(data_dir, upload__delay="0s")
    wait_for(lambda: uploaded(server, "old-version"))  # re-aimed at the current version
    wait_for(lambda: queue_row(server, "no-file") is None)  # nothing left to upload
    wait_for(lambda: (queue_row(server, "no-bytes") or {"state": ""})["state"] == "failed")
    assert "local bytes" in queue_row(server, "no-bytes")["last_error"]
    assert (server.settings.data_dir / "remote" / "old-version").read_bytes() == b"old-version"


def test_store_cut_mid_drain_then_back(make_server, moto, bucket):
    """Connections in use are cut mid-drain (not refused from the start): uploads in flight
    fail, are retried, and everything arrives once the store is back."""
    proxy = FaultProxy(moto.port, latency=0.1)  # slow enough that the cut finds work to cut
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__delay="0s", upload__concurrency="2",
                             upload__max_attempts="1000", **FAST_RETRY, **overrides)
        bodies = {f"cut/{i:02d}.bin": os.urandom(300_000) for i in range(30)}
        with server.client() as client:
            for path, body in bodies.items():
                client.put(f"/files/{path}", content=body)
        wait_for(lambda: counters(server)["uploads.done"] >= 3)
        proxy.down()
        wait_for(lambda: any((queue_row(server, p) or {"attempts": 0})["attempts"] >= 1
                             for p in bodies))
        proxy.up()
        wait_for(lambda: all(uploaded(server, p) for p in bodies), timeout=30)
        for path, body in bodies.items():
            assert s3_body(moto, bucket, f"fs/{path}") == body
    finally:
        proxy.close()


def test_reput_while_its_upload_runs(make_server, moto, bucket):
    """The older upload finishes, records nothing, and the newer version goes up after it."""
    proxy = FaultProxy(moto.port, latency=0.5)  # every S3 request takes half a second
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__delay="0s", **overrides)
        with server.client() as client:
            client.put("/files/race.txt", content=b"version one")
            wait_for(lambda: queue_row(server, "race.txt")["leased_until"] is not None)
            client.put("/files/race.txt", content=b"version two")  # while v1 is uploading
            wait_for(lambda: uploaded(server, "race.txt"), timeout=20)
            assert client.get("/files/race.txt").content == b"version two"
        assert s3_body(moto, bucket, "fs/race.txt") == b"version two"
        assert counters(server)["uploads.done"] == 1  # v1's upload was not recorded
        assert queue_row(server, "race.txt") is None
    finally:
        proxy.close()


def test_delete_while_its_upload_runs(make_server, moto, bucket):
    """The upload in flight may create the object: the DELETE queues its removal after it."""
    proxy = FaultProxy(moto.port, latency=0.5)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url": proxy.url}
        server = make_server(upload__delay="0s", **overrides)
        with server.client() as client:
            client.put("/files/gone.txt", content=b"short-lived")
            wait_for(lambda: queue_row(server, "gone.txt")["leased_until"] is not None)
            assert client.delete("/files/gone.txt").status_code == 204
            assert queue_row(server, "gone.txt")["op"] == "delete"
        wait_for(lambda: queue_row(server, "gone.txt") is None, timeout=20)
        assert s3_body(moto, bucket, "fs/gone.txt") is None
        assert file_row(server, "gone.txt") is None
        assert counters(server)["uploads.done"] == 0
    finally:
        proxy.close()


def test_a_store_that_echoes_the_checksum_but_stores_less_is_not_trusted(
        make_server, moto, bucket):
    """moto answers a PutObject sent as application/x-www-form-urlencoded with our checksum
    but stores an empty object (its web layer parses the body as a form). The upload's HEAD
    sees the size differ: the upload fails, and the local bytes stay the only, served, copy."""
    server = make_server(upload__delay="0s", **s3_overrides(moto, bucket))
    body = os.urandom(100_000)
    with server.client() as client:
        # A name with no known extension: the form type is stored as sent (see
        # test_content_type.py), and sent on to the store.
        reply = client.put("/files/form", content=body,
                           headers={"content-type": "application/x-www-form-urlencoded"})
        assert reply.status_code == 201
        row = wait_for(lambda: (lambda r: r if r is not None and r["last_error"] else None)(
            queue_row(server, "form")), timeout=20)
        assert "stored 0 bytes, sent 100000" in row["last_error"]
        assert file_row(server, "form")["location"] == "local"
        assert client.get("/files/form").content == body


def test_a_put_due_later_than_the_queue_looks_wakes_nobody(make_server, monkeypatch):
    """A PUT wakes the dispatcher only when its upload is due before the dispatcher looks at
    the queue anyway: each look is a registry read on the event loop's thread. A DELETE still
    wakes it at once (its remote work may be due now)."""
    server = make_server(upload__delay="1h")
    workers = server.service.workers
    queue = server.store.registry.read.queue
    looks: list[float] = []
    real = queue.next_due

    def counted(now: float) -> float | None:
        looks.append(now)
        return real(now)

    monkeypatch.setattr(queue, "next_due", counted)
    wait_for(lambda: workers._looks_at < math.inf)  # asleep until its next look
    with server.client() as client:
        for i in range(5):
            assert client.put(f"/files/later/{i}.txt", content=b"x").status_code == 201
        assert looks == []
        assert queue_row(server, "later/4.txt")["op"] == "upload"
        assert client.delete("/files/later/0.txt").status_code == 204
        wait_for(lambda: len(looks) > 0)
