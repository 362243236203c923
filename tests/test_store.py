"""Atomicity, concurrency, disconnects, crash recovery and counters of the local store."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
from pathlib import Path

import anyio
from conftest import wait_for

from filestore.config import load_settings
from filestore.store import Store


def test_concurrent_puts_of_one_path_one_wins_whole(server):
    bodies = [bytes([i]) * (2 * 1024 * 1024 + i) for i in range(8)]
    digests = {hashlib.sha256(b).hexdigest(): b for b in bodies}
    reads: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def writer(body: bytes) -> None:
        with server.client() as client:
            for _ in range(3):
                assert client.put("/files/same.bin", content=body).status_code in (200, 201)

    def reader() -> None:
        with server.client() as client:
            while not stop.is_set():
                r = client.get("/files/same.bin")
                if r.status_code == 200:
                    reads.append((r.headers["etag"], r.content))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()

    with server.client() as client:
        final = client.get("/files/same.bin")
    assert hashlib.sha256(final.content).hexdigest() in digests
    assert final.headers["etag"] == f'"{hashlib.sha256(final.content).hexdigest()}"'
    assert reads, "the readers saw no complete response"
    for etag, content in reads:  # every read is one whole version, with its own ETag
        assert etag == f'"{hashlib.sha256(content).hexdigest()}"'
        assert content in bodies
    assert list((server.settings.data_dir / "tmp").iterdir()) == []
    counters = server.store.registry.read.counters.all()
    assert counters["files"] == 1 and counters["bytes"] == len(final.content)


def test_client_disconnect_mid_put_leaves_nothing(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        (
            "PUT /files/cut.bin HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.token}\r\nContent-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
    )
    sock.sendall(b"a" * (3 * 1024 * 1024))
    tmp_dir = server.settings.data_dir / "tmp"
    wait_for(lambda: list(tmp_dir.iterdir()))  # the body is being received
    sock.close()
    wait_for(lambda: not list(tmp_dir.iterdir()))
    with server.client() as client:
        assert client.get("/files/cut.bin").status_code == 404
    assert server.store.registry.read.counters.all()["files"] == 0


def test_counters_follow_every_change(client, server):
    client.put("/files/a", content=b"1234")
    client.put("/files/b", content=b"12")
    client.put("/files/a", content=b"123456")  # replace: bytes change, count does not
    client.delete("/files/b")
    counters = server.store.registry.read.counters.all()
    assert counters["files"] == 1 and counters["bytes"] == 6
    assert counters["files.local"] == 1 and counters["bytes.local"] == 6
    assert counters["files.remote"] == 0


def _store(data_dir: Path) -> Store:
    return Store(load_settings(environ={"FILESTORE_STORAGE__DATA_DIR": str(data_dir),
                                        "FILESTORE_STORAGE__MIN_FREE": "0"}))


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_a_clean_restart_changes_nothing(tmp_path):
    store = _store(tmp_path)
    anyio.run(lambda: store.put("a.txt", _chunks(b"kept"), content_type=None,
                                content_length=None))
    before = store.lookup("a.txt")
    assert store.registry.read.intents.all() == []  # the commit removed its own intent
    store.close()
    store = _store(tmp_path)
    assert store.lookup("a.txt") == before
    store.close()


def test_recovery_records_a_rename_that_was_not_committed(tmp_path):
    store = _store(tmp_path)
    anyio.run(lambda: store.put("x/old.txt", _chunks(b"old"), content_type=None,
                                content_length=None))
    # Simulate a crash inside the commit: intent recorded, temp renamed, row not updated.
    body = b"new bytes"
    tmp = store.local.tmp_dir / "put-crashed"
    tmp.write_bytes(body)
    with store.registry.transaction() as tx:
        tx.intents.add("put", "x/old.txt", str(tmp), len(body),
                       hashlib.sha256(body).hexdigest(), "text/plain")
    os.replace(tmp, store.local.path_of("x/old.txt"))
    store.close()

    store = _store(tmp_path)
    record = store.lookup("x/old.txt")
    assert record.sha256 == hashlib.sha256(body).hexdigest() and record.size == len(body)
    assert record.inode == store.local.path_of("x/old.txt").stat().st_ino
    assert store.registry.read.intents.all() == []
    # ...and its upload is queued for the version recovery recorded
    queued = store.registry.read.queue.get("x/old.txt")
    assert queued is not None and (queued.op, queued.version) == ("upload", record.version)
    store.close()


def test_recovery_records_nothing_of_a_put_whose_body_went_before_its_rename(tmp_path):
    """An intent whose temp file is gone, but whose rename never happened (the PUT failed,
    its body was discarded, and removing the intent failed too): the file on disk is the old
    version, so the old record stays, not the intent's size and hash over the old bytes."""
    store = _store(tmp_path)
    anyio.run(lambda: store.put("z.txt", _chunks(b"old bytes, still here"), content_type=None,
                                content_length=None))
    before = store.lookup("z.txt")
    body = b"a body discarded before its rename"
    with store.registry.transaction() as tx:
        tx.intents.add("put", "z.txt", str(store.local.tmp_dir / "put-gone"), len(body),
                       hashlib.sha256(body).hexdigest(), "text/plain")
    store.close()

    store = _store(tmp_path)
    after = store.lookup("z.txt")
    assert (after.sha256, after.size, after.version) == (before.sha256, before.size,
                                                          before.version)
    assert store.local.path_of("z.txt").read_bytes() == b"old bytes, still here"
    assert store.registry.read.intents.all() == []
    store.close()


def test_recovery_discards_an_unrenamed_body_and_stray_temp_files(tmp_path):
    store = _store(tmp_path)
    tmp = store.local.tmp_dir / "put-unfinished"
    tmp.write_bytes(b"never acknowledged")
    with store.registry.transaction() as tx:
        tx.intents.add("put", "y.txt", str(tmp), 18, "0" * 64, "text/plain")
    (store.local.tmp_dir / "put-stray").write_bytes(b"half a body")
    store.close()

    store = _store(tmp_path)
    assert store.registry.read.files.get("y.txt") is None
    assert store.registry.read.intents.all() == []
    assert store.local.temp_files() == []
    store.close()


def test_no_recovery_while_another_process_uses_the_directory(tmp_path):
    first = _store(tmp_path)
    stray = first.local.tmp_dir / "put-in-flight"
    stray.write_bytes(b"another process is still writing this")
    second = _store(tmp_path)  # `first` is live: its temp file may be a PUT in flight
    assert stray.exists()
    second.close()
    first.close()


def test_missing_local_bytes_answer_404_not_500(client, server):
    client.put("/files/gone.txt", content=b"x")
    os.unlink(server.store.local.path_of("gone.txt"))
    r = client.get("/files/gone.txt")
    assert r.status_code == 404 and "verify" in r.json()["detail"]


def test_data_dir_restored_from_a_copy_still_serves(make_server, tmp_path):
    # A copied data directory has new inodes throughout; reads must still work.
    original = make_server(tmp_path / "a")
    with original.client() as client:
        client.put("/files/k.txt", content=b"kept")
    original.stop()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = make_server(tmp_path / "b")
    with copy.client() as client:
        r = client.get("/files/k.txt")
    assert r.status_code == 200 and r.content == b"kept"
