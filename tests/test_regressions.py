"""Regressions: each test pins down a bug a review found (and that is fixed)."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from conftest import file_row, queue_row, recorded_remote, uploaded, wait_for


def test_dispatcher_survives_a_transient_registry_error(make_server, monkeypatch):
    from filestore.queue import worker

    calls = {"n": 0}
    real = worker.QueueWorkers._lease

    def flaky(self, limit):
        calls["n"] += 1
        if calls["n"] == 1:  # the first lease (the dispatcher leases only when a row is due)
            raise sqlite3.OperationalError("database is locked")
        return real(self, limit)

    monkeypatch.setattr(worker.QueueWorkers, "_lease", flaky)
    server = make_server(upload__delay="0s")
    with server.client() as client:
        assert client.put("/files/one", content=b"1").status_code == 201
        wait_for(lambda: calls["n"] >= 1)
        wait_for(lambda: uploaded(server, "one"))  # the dispatcher came back by itself
        r = client.get("/files/one")
        r2 = client.put("/files/two", content=b"2")
        assert r.status_code == 200 and r2.status_code == 201
        wait_for(lambda: uploaded(server, "two"))


def test_put_below_an_uploaded_file_is_a_conflict(make_server):
    """README: 'A path that would need a file to be a directory (or the reverse): 409'."""
    server = make_server(upload__delay="0s")
    with server.client() as client:
        assert client.put("/files/a", content=b"parent bytes").status_code == 201
        wait_for(lambda: uploaded(server, "a"))  # files/a moved to cache/a: files/ has no 'a'
        r = client.put("/files/a/b", content=b"child")
        get_a = client.get("/files/a")
        assert (r.status_code, get_a.status_code) == (409, 200)
        assert get_a.content == b"parent bytes"


def test_put_above_an_uploaded_file_then_delete_is_not_a_500(make_server):
    server = make_server(upload__delay="0s")
    with server.client() as client:
        assert client.put("/files/d/x", content=b"child").status_code == 201
        wait_for(lambda: uploaded(server, "d/x"))  # files/d pruned, bytes in cache/d/x
        r = client.put("/files/d", content=b"now a file")
        deleted = client.delete("/files/d/x")
        assert (r.status_code, deleted.status_code) == (409, 204)


def test_listing_limit_with_a_unicode_digit_is_not_a_500(client, tracebacks):
    r = client.get("/files/", params={"limit": "\u00b2"})  # '²'.isdigit() is True, int() fails
    tracebacks.settle(r.status_code)
    assert r.status_code == 400


def test_put_answers_with_what_it_stored(make_server, monkeypatch):
    """Another writer (another request or process) commits between this PUT's commit and its
    `self.lookup(path)`: the PUT that succeeded answers 404, or with the other body's hash."""
    server = make_server(upload__delay="1h")
    store = server.store
    service = server.service
    wake = service.changed

    def concurrent_delete(due: float | None = None) -> None:  # right after the PUT commits
        monkeypatch.setattr(service, "changed", wake)
        store._delete("raced", None)

    with server.client() as client:
        monkeypatch.setattr(service, "changed", concurrent_delete)
        r = client.put("/files/raced", content=b"mine")
        assert r.status_code == 201


def test_delete_after_reput_still_deletes_the_remote_copy(make_server, tmp_path):
    """DELETE (remote delete pending), PUT again, DELETE again before the new upload: the old
    object must still go, although the PUT replaced the pending remote delete."""
    data_dir = tmp_path / "data"
    first = make_server(data_dir, upload__delay="0s")
    with first.client() as client:
        client.put("/files/secret.txt", content=b"v1 personal data")
        wait_for(lambda: uploaded(first, "secret.txt"))
    first.stop()
    remote_copy = data_dir / "remote" / "secret.txt"
    assert remote_copy.exists()

    paused = make_server(data_dir, upload__delay="0s", upload__enabled="false")
    with paused.client() as client:
        assert client.delete("/files/secret.txt").status_code == 204  # remote delete queued
        assert queue_row(paused, "secret.txt")["op"] == "delete"
        assert client.put("/files/secret.txt", content=b"v2").status_code == 201
        assert client.delete("/files/secret.txt").status_code == 204
        assert queue_row(paused, "secret.txt")["op"] == "delete"
    paused.stop()

    resumed = make_server(data_dir, upload__delay="0s")
    wait_for(lambda: not remote_copy.exists())
    wait_for(lambda: queue_row(resumed, "secret.txt") is None)
    assert file_row(resumed, "secret.txt") is None


def test_crash_between_the_upload_record_and_the_move_to_cache(make_server, tmp_path,
                                                               monkeypatch):
    """The move into cache/ is a step after the commit that records the upload: if it never
    happens (a crash, an error), the bytes stay in files/ and are still served."""
    from filestore.local import LocalStore

    def crash(self: Any, path: str) -> None:
        raise RuntimeError("simulated crash before the move to cache/")

    monkeypatch.setattr(LocalStore, "move_to_cache", crash)
    data_dir = tmp_path / "data"
    server = make_server(data_dir, upload__delay="0s", upload__retry_base="0.05s",
                         upload__retry_max="0.1s")
    with server.client() as client:
        client.put("/files/rec.wav", content=b"recording")
        wait_for(lambda: recorded_remote(server, "rec.wav"))
        wait_for(lambda: queue_row(server, "rec.wav") is None)  # recorded once, not retried
        assert (data_dir / "files" / "rec.wav").read_bytes() == b"recording"
        assert client.get("/files/rec.wav").content == b"recording"


def test_bytes_left_in_cache_by_an_interrupted_move_are_still_uploaded(make_server, tmp_path):
    """A row that says local with its bytes already in cache/ (an interrupted older move)."""
    data_dir = tmp_path / "data"
    paused = make_server(data_dir, upload__delay="0s", upload__enabled="false")
    with paused.client() as client:
        client.put("/files/moved.txt", content=b"moved early")
    paused.stop()
    (data_dir / "cache").mkdir(exist_ok=True)
    (data_dir / "files" / "moved.txt").rename(data_dir / "cache" / "moved.txt")
    server = make_server(data_dir, upload__delay="0s")
    wait_for(lambda: uploaded(server, "moved.txt"))
    assert (data_dir / "remote" / "moved.txt").read_bytes() == b"moved early"


def test_multipart_part_failure_is_translated(moto, bucket, tmp_path):
    """A part that fails (here AccessDenied) escapes `_translated` wrapped in the task group's
    ExceptionGroup: the queue then sees no RemoteError, retries a permanent error as if it
    were transient, and records 'ExceptionGroup: unhandled errors in a TaskGroup' as
    last_error instead of the store's message."""
    import anyio
    import botocore.exceptions

    from filestore.config import RemoteSettings
    from filestore.errors import RemoteError
    from filestore.queue.retry import is_retryable
    from filestore.remote import open_remote

    settings = RemoteSettings(url=f"s3://{bucket}/pre", endpoint_url=moto.url,
                              region="us-east-1", access_key_id="test",
                              secret_access_key="test", multipart_threshold=5 * 1024 * 1024,
                              part_size=5 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(b"x" * (11 * 1024 * 1024))

    async def main() -> BaseException:
        remote = open_remote("default", settings, tmp_path)
        await remote.open()
        client = remote._client

        async def denied(**kwargs: Any) -> Any:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}}, "UploadPart")

        client.upload_part = denied
        try:
            import hashlib
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            with open(source, "rb") as fh:
                await remote.put("big.bin", fh, source.stat().st_size, digest, "x/y")
        except BaseException as exc:
            return exc
        finally:
            await remote.close()
        raise AssertionError("no error")

    exc = anyio.run(main)
    assert isinstance(exc, RemoteError) and not is_retryable(exc)
    assert "AccessDenied" in exc.detail


def test_multipart_upload_is_verified_against_the_files_sha256(moto, bucket, tmp_path):
    """Local bytes that are not the registered file (bit rot, a swapped file) must not go up
    as a verified multipart copy: a permanent error that says so, and the upload aborted."""
    import anyio

    from filestore.config import RemoteSettings
    from filestore.errors import RemoteError
    from filestore.remote import open_remote

    settings = RemoteSettings(url=f"s3://{bucket}/pre", endpoint_url=moto.url,
                              region="us-east-1", access_key_id="test",
                              secret_access_key="test", multipart_threshold=5 * 1024 * 1024,
                              part_size=5 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(b"y" * (11 * 1024 * 1024))
    registered_sha256 = "0" * 64  # what the registry says the bytes are; they are not

    async def main() -> Any:
        remote = open_remote("default", settings, tmp_path)
        await remote.open()
        try:
            with open(source, "rb") as fh:
                return await remote.put("big.bin", fh, source.stat().st_size,
                                        registered_sha256, "x/y")
        except RemoteError as exc:
            return exc
        finally:
            await remote.close()

    result = anyio.run(main)
    assert isinstance(result, RemoteError) and not result.retryable
    assert "no longer match" in result.detail
    assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert moto.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_bad_remote_url_exits_2_with_one_line(tmp_path):
    """README: 'An unknown key or a bad value stops the start with one line ... exit 2'.
    remote.url is only parsed in the app's lifespan: `serve` prints 'serving ...', then
    uvicorn logs a traceback and exits 3."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FILESTORE_STORAGE__DATA_DIR": str(tmp_path / "d"),
           "FILESTORE_STORAGE__MIN_FREE": "0", "FILESTORE_SERVER__PORT": str(port),
           "FILESTORE_REMOTE__URL": "ftp://example.com/x"}
    env.pop("FILESTORE_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "filestore", "serve"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_file_remote_upload_below_a_deleted_file_waiting_for_its_remote_delete(make_server):
    """'a' is deleted with its remote copy kept for an hour (upload.delete_delay), then 'a/b'
    is PUT: its upload cannot land while remote/a is a file, and must keep being retried (it
    succeeds once the remote delete has run), never fail for good."""
    server = make_server(upload__delay="0s", upload__delete_delay="1h",
                         upload__retry_base="0.05s", upload__retry_max="0.1s")
    with server.client() as client:
        client.put("/files/a", content=b"old")
        wait_for(lambda: uploaded(server, "a"))
        assert client.delete("/files/a").status_code == 204
        assert client.put("/files/a/b", content=b"new").status_code == 201
        wait_for(lambda: queue_row(server, "a/b")["attempts"] >= 2)
        row = queue_row(server, "a/b")
        assert row["state"] == "pending", row["last_error"]


def test_failed_put_leaves_the_previous_version_readable(make_server, monkeypatch):
    """A registry error after `install` renamed the body over the old file (an injected
    'database or disk is full') rolls the row back but not the rename: the registry must be
    brought in line with the bytes at once, so reads never see a row without its bytes."""
    from filestore.registry.files import FileRows

    server = make_server(upload__delay="1h")
    real = FileRows.upsert
    fail = {"on": False}

    def flaky(rows, *args, **kwargs):
        if fail["on"]:
            fail["on"] = False
            raise sqlite3.OperationalError("database or disk is full")
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(FileRows, "upsert", flaky)
    with server.client() as client:
        assert client.put("/files/doc", content=b"version one").status_code == 201
        fail["on"] = True
        r = client.put("/files/doc", content=b"version two, longer")
        got = client.get("/files/doc")
        assert r.status_code >= 500
        assert got.status_code == 200 and got.content in (b"version one", b"version two, longer")


def test_a_failing_background_task_does_not_take_the_server_down(make_server, tmp_path):
    """An unexpected error in a background task (here the start-up cleanup meets a directory
    in remote/.filestore-tmp) must not end the task group that serves requests."""
    data_dir = tmp_path / "data"
    (data_dir / "remote" / ".filestore-tmp" / "leftover-dir").mkdir(parents=True)
    server = make_server(data_dir, upload__delay="0s")
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.put("/files/x", content=b"x").status_code == 201
        wait_for(lambda: uploaded(server, "x"))
        assert client.get("/files/x").content == b"x"


def test_noncharacters_are_refused_so_prefix_scans_see_every_path(client):
    """The listing bounds a prefix scan with U+10FFFF: a noncharacter, which no path holds."""
    for name in ("p/\U0010ffff", "p/\U0010ffffz", "p/\ufffe", "p/\ufdd0"):
        r = client.put("/files/" + name, content=b"x")
        assert r.status_code == 400 and r.json()["error"] == "bad_path"
    for name in ("p/a", "p/\U0010fffd", "p/\uffef"):
        assert client.put("/files/" + name, content=b"x").status_code == 201
    assert len(client.get("/files/", params={"prefix": "p/"}).json()["items"]) == 3


def test_file_remote_delete_pruning_does_not_fail_a_concurrent_upload(make_server, monkeypatch):
    """FileRemote._delete of a folder's last object prunes the folder; an upload into that
    folder copying its temp file at that moment must still land (it re-creates the folder)."""
    from filestore.local import LocalStore

    real_open = LocalStore.open_version
    slow = {"on": False, "started": False}
    release = threading.Event()

    class SlowSource:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, *a):
            return self.fh.seek(*a)

        def read(self, n=-1):
            if slow["on"]:
                slow["started"] = True
                release.wait(10)  # a large file being copied, until the delete has run
                slow["on"] = False
            return self.fh.read(n)

    def open_version(self, path, record, version, **where):
        fh = real_open(self, path, record, version, **where)
        return SlowSource(fh) if fh is not None and path == "album/new.jpg" else fh

    monkeypatch.setattr(LocalStore, "open_version", open_version)
    server = make_server(upload__delay="0s")
    with server.client() as client:
        client.put("/files/album/old.jpg", content=b"old")
        wait_for(lambda: uploaded(server, "album/old.jpg"))
        slow["on"] = True
        client.put("/files/album/new.jpg", content=b"new")
        wait_for(lambda: slow["started"])
        assert client.delete("/files/album/old.jpg").status_code == 204
        wait_for(lambda: queue_row(server, "album/old.jpg") is None)  # remote delete done
        release.set()
        wait_for(lambda: uploaded(server, "album/new.jpg"))
        assert (server.settings.data_dir / "remote" / "album" / "new.jpg").read_bytes() == b"new"


def test_an_empty_token_file_is_not_taken_as_the_token(make_server, tmp_path):
    """load_or_create_token creates `token` with O_EXCL and writes it afterwards; a crash in
    between leaves an empty file that every later start reads as the token "": every write is
    401 for good and `filestore token` prints an empty line."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "token").write_text("")  # what kill -9 right after os.open(O_EXCL) leaves
    server = make_server(data_dir)
    assert len(server.token) >= 32
    assert (data_dir / "token").read_text().strip() == server.token


def test_credentials_in_the_endpoint_url_are_never_shown(tmp_path):
    from filestore.config import RemoteSettings
    from filestore.remote import open_remote

    remote = open_remote("default", RemoteSettings(
        url="s3://bkt/p", endpoint_url="http://admin:hunter2@minio:9000"), tmp_path)
    assert "hunter2" not in remote.display_url + repr(remote)
    assert "minio:9000" in remote.display_url


def test_reput_of_an_uploaded_file_drops_its_stale_cached_bytes(make_server, tmp_path):
    data_dir = tmp_path / "data"
    cached = data_dir / "cache" / "doc.txt"
    first = make_server(data_dir, upload__delay="0s")
    with first.client() as client:
        client.put("/files/doc.txt", content=b"v1")
    wait_for(lambda: cached.exists())
    first.stop()
    later = make_server(data_dir, upload__delay="1h")  # v2 stays local for now
    with later.client() as client:
        client.put("/files/doc.txt", content=b"v2")
        assert not cached.exists()
        assert client.get("/files/doc.txt").content == b"v2"
