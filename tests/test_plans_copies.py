"""Storage plans and copies of one path in two remotes. The registry records one remote per file
(`files.remote`) and the queue holds one row per path, so an upload to another remote than the one
holding the file's older copy deletes that copy first and points the row at the new remote before
any byte moves. Each test here checks that no copy is lost or left behind, whatever comes between.

Real servers, `file://` remotes (one on moto behind the fault proxy, to hold an upload in flight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from conftest import Moto, file_row, queue_row, uploaded, wait_for
from faults import FaultProxy

# Images go to "archive"; everything else to "default".
RULES = '[[plan]]\ncontent_type = "image/*"\nremote = "archive"\n'


def config(tmp_path: Path, delete_delay: str = "0s", archive: str | None = None) -> Path:
    """Both remotes in directories of their own (or `archive`: a [remotes.archive] body)."""
    path = tmp_path / "filestore.toml"
    archive = archive or f'url = "file://{tmp_path / "r-archive"}"\n'
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free = "0"\n[cache]\nmin_free = "0"\n'
        f'[upload]\ndelay = "0s"\ndelete_delay = "{delete_delay}"\n'
        f'[remote]\nurl = "file://{tmp_path / "r-default"}"\n'
        f"[remotes.archive]\n{archive}" + RULES)
    return path


def put(client: httpx.Client, path: str, body: bytes, content_type: str) -> None:
    reply = client.put(f"/files/{path}", content=body, headers={"content-type": content_type})
    assert reply.status_code in (200, 201), reply.text


def in_remote(server: Any, path: str, remote: str) -> bool:
    row = file_row(server, path)
    return bool(row is not None and row["location"] == "remote" and row["remote"] == remote
                and uploaded(server, path))


def rerouted(server: Any, client: httpx.Client, path: str, tmp_path: Path) -> None:
    """`path` uploaded to default, then replaced by an image: uploaded to archive, and its
    older copy in default deleted before that upload."""
    put(client, path, b"v1 text", "text/plain")
    wait_for(lambda: in_remote(server, path, "default"), timeout=20)
    put(client, path, b"v2 image", "image/png")
    wait_for(lambda: in_remote(server, path, "archive"), timeout=20)
    assert queue_row(server, path) is None
    assert not (tmp_path / "r-default" / path).exists()
    assert (tmp_path / "r-archive" / path).read_bytes() == b"v2 image"


def test_a_remote_moved_onto_another_remotes_place_is_refused(make_server: Any,
                                                             tmp_path: Path) -> None:
    """Overlapping remotes are refused at start; an admin save must refuse them too, or the
    delete of a re-routed file's "older copy" would remove the only cloud copy of the new
    version."""
    server = make_server(config=config(tmp_path))
    with server.client() as client:
        saved = client.put("/admin/api/settings", json={
            "remotes": {"archive": {"url": f"file://{tmp_path / 'r-default'}"}}})
        outcome = "refused"
        if saved.status_code == 200:
            put(client, "x.bin", b"v1 text", "text/plain")
            wait_for(lambda: in_remote(server, "x.bin", "default"), timeout=20)
            put(client, "x.bin", b"v2 image", "image/png")
            wait_for(lambda: in_remote(server, "x.bin", "archive")
                     and queue_row(server, "x.bin") is None, timeout=20)
            assert client.post("/admin/api/files/x.bin/evict").status_code == 200
            read = client.get("/files/x.bin")
            outcome = f"then a GET of the re-routed file answered {read.status_code} " \
                      f"{read.content[:80]!r} (its only cloud copy was deleted)"
        assert saved.status_code in (400, 409), f"saved ({saved.status_code}); {outcome}"


def test_a_delete_soon_after_a_reroute_removes_every_copy(make_server: Any,
                                                          tmp_path: Path) -> None:
    server = make_server(config=config(tmp_path, delete_delay="3s"))
    with server.client() as client:
        rerouted(server, client, "y.bin", tmp_path)
        assert client.delete("/files/y.bin").status_code == 204
    left = [tmp_path / "r-default" / "y.bin", tmp_path / "r-archive" / "y.bin"]
    assert wait_for(lambda: queue_row(server, "y.bin") is None, timeout=20)
    assert [str(p) for p in left if p.exists()] == []


def test_a_move_to_local_during_the_old_copys_delete_keeps_track_of_the_new_copy(
        make_server: Any, tmp_path: Path) -> None:
    """Brought back local, the file still records its copy in archive: a DELETE removes it."""
    server = make_server(config=config(tmp_path, delete_delay="3s"))
    with server.client() as client:
        rerouted(server, client, "z.bin", tmp_path)
        assert client.post("/admin/api/files/z.bin/local").status_code == 200
        wait_for(lambda: queue_row(server, "z.bin") is None, timeout=20)
        assert not (tmp_path / "r-default" / "z.bin").exists()
        assert (tmp_path / "r-archive" / "z.bin").exists()
        row = file_row(server, "z.bin")
        assert row is not None and row["remote"] == "archive"
        assert client.delete("/files/z.bin").status_code == 204
        wait_for(lambda: not (tmp_path / "r-archive" / "z.bin").exists(), timeout=20)


def test_a_delete_during_an_upload_to_a_new_remote_removes_every_copy(
        make_server: Any, tmp_path: Path, moto: Moto, bucket: str) -> None:
    """v1 is in default; v2 goes to archive. A DELETE while v2's PUT is in flight (its answer
    held, then lost) must remove the object that PUT left in archive, and v1's in default."""
    proxy = FaultProxy(moto.port, http=True)
    try:
        archive = (f'url = "s3://{bucket}/arch"\nendpoint_url = "{proxy.url}"\n'
                   'region = "us-east-1"\naccess_key_id = "test"\nsecret_access_key = "test"\n')
        server = make_server(config=config(tmp_path, archive=archive))
        s3 = moto.client()
        with server.client() as client:
            put(client, "w.bin", b"v1 text", "text/plain")
            wait_for(lambda: in_remote(server, "w.bin", "default"), timeout=20)
            held = proxy.stall_after(-1, method="PUT", path="arch/w.bin")  # stored, unanswered
            put(client, "w.bin", b"v2 image", "image/png")
            wait_for(lambda: held.hits == 1, timeout=20)
            wait_for(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="arch/w.bin")
                     .get("KeyCount"), timeout=20)
            assert client.delete("/files/w.bin").status_code == 204
            proxy.clear()  # the held PUT's answer is lost: the upload fails, the row moves on
            wait_for(lambda: queue_row(server, "w.bin") is None, timeout=30)
        assert not (tmp_path / "r-default" / "w.bin").exists()
        assert s3.list_objects_v2(Bucket=bucket, Prefix="arch/w.bin").get("KeyCount", 0) == 0
    finally:
        proxy.close()


def test_with_delete_delay_never_the_older_copy_stays(make_server: Any, tmp_path: Path) -> None:
    """"never" keeps remote copies, re-routed or deleted: the row then records the new one."""
    server = make_server(config=config(tmp_path, delete_delay="never"))
    with server.client() as client:
        put(client, "k.bin", b"v1 text", "text/plain")
        wait_for(lambda: in_remote(server, "k.bin", "default"), timeout=20)
        put(client, "k.bin", b"v2 image", "image/png")
        wait_for(lambda: in_remote(server, "k.bin", "archive"), timeout=20)
    assert (tmp_path / "r-default" / "k.bin").read_bytes() == b"v1 text"
    assert (tmp_path / "r-archive" / "k.bin").read_bytes() == b"v2 image"


def test_a_file_the_plan_now_keeps_local_loses_its_older_cloud_copy(make_server: Any,
                                                                    tmp_path: Path) -> None:
    """upload = false for a file uploaded under an older plan: its re-PUT stays local, and the
    cloud copy of the older bytes goes, as a deleted file's would."""
    path = tmp_path / "later.toml"
    path.write_text(config(tmp_path).read_text()
                    + '[[plan]]\nprefix = "faxes/"\nupload = false\n')
    server = make_server(config=config(tmp_path))
    with server.client() as client:
        put(client, "faxes/1.pdf", b"uploaded then", "application/pdf")
        wait_for(lambda: in_remote(server, "faxes/1.pdf", "default"), timeout=20)
    server.stop()
    server = make_server(config=path)
    with server.client() as client:
        put(client, "faxes/1.pdf", b"kept here now", "application/pdf")
        wait_for(lambda: queue_row(server, "faxes/1.pdf") is None, timeout=20)
        assert not (tmp_path / "r-default" / "faxes" / "1.pdf").exists()
        row = file_row(server, "faxes/1.pdf")
        assert row is not None and row["location"] == "local" and row["remote"] is None
        assert client.get("/files/faxes/1.pdf").content == b"kept here now"
