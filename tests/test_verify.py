"""`filestore verify` and `filestore restore` on real data directories, moto's real S3 server and a
`filestore serve` process: every kind of damage that can be inflicted is found, `--repair` fixes
what it says it fixed, and a second verify agrees."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from conftest import counters, file_row, queue_row, s3_overrides, uploaded, wait_for

from filestore.cli import main
from filestore.config import load_settings
from filestore.store import Store


def env_for(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {"FILESTORE_STORAGE__DATA_DIR": str(data_dir), "FILESTORE_STORAGE__MIN_FREE": "0",
           "FILESTORE_CACHE__MIN_FREE": "0"}
    env.update({f"FILESTORE_{k.upper()}": v for k, v in overrides.items()})
    return env


def cli(data_dir: Path, *args: str, **overrides: str):
    """The command in this process (a subprocess costs a second of imports)."""
    result = CliRunner().invoke(main, list(args), env=env_for(data_dir, **overrides))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def findings(result) -> dict[tuple[str, str], str | None]:
    """(kind, path) -> what the repair did, from `verify --json`."""
    document = json.loads(result.stdout)
    found = {(f["kind"], f["path"]): f["repair"] for f in document["findings"]}
    assert len(found) == len(document["findings"]), document  # one finding per problem
    assert document["ok"] is (not found)
    return found


def flip(file: Path, offset: int = 0) -> None:
    """Flip one byte in place: same size, same inode, other content (bit rot)."""
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "registry.sqlite3", timeout=10)


def view(data_dir: Path):
    """What conftest's registry helpers need of a server, for a data directory."""
    return types.SimpleNamespace(settings=types.SimpleNamespace(
        data_dir=data_dir, upload=types.SimpleNamespace(keep_local=False)))


UPLOADED = {"up/a.txt": b"a" * 1000, "up/b.txt": b"b" * 2000, "up/c.txt": b"c" * 3000,
            "up/cold.bin": os.urandom(5000)}
LOCAL = {"loc/x.txt": b"x" * 100, "loc/y.txt": b"y" * 200, "loc/z.txt": b"z" * 300}


def populate(make_server, data_dir: Path, **remote: str) -> None:
    """Uploaded files (cached, and one only the cloud has) and local ones, queued for upload."""
    server = make_server(data_dir, upload__delay="0s", **remote)
    with server.client() as client:
        for path, body in UPLOADED.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        wait_for(lambda: all(uploaded(server, path) for path in UPLOADED))
        wait_for(lambda: counters(server)["cache.entries"] == len(UPLOADED))
    server.stop()
    server = make_server(data_dir, upload__delay="1h", **remote)
    with server.client() as client:
        for path, body in LOCAL.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    server.stop()
    settings = load_settings(environ=env_for(data_dir, **remote))
    store = Store(settings)
    try:
        assert anyio.run(store.evict, "up/cold.bin")  # now only the cloud has it
    finally:
        store.close()


def test_every_kind_of_damage_is_found_and_repaired(make_server, moto, bucket, tmp_path):
    data = tmp_path / "data"
    remote = s3_overrides(moto, bucket)
    populate(make_server, data, **remote)
    s3 = moto.client()

    clean = cli(data, "verify", "--remote", **remote)
    assert clean.exit_code == 0, clean.output
    assert "7 files checked" in clean.stdout and "all good" in clean.stdout

    files, cache = data / "files", data / "cache"
    (files / "loc/x.txt").unlink()                                    # a local file deleted
    flip(files / "loc/y.txt")                                         # bit rot, the only copy
    flip(cache / "up/a.txt", 500)                                     # bit rot in the cache
    s3.delete_object(Bucket=bucket, Key="fs/up/b.txt")                # the cloud lost it...
    s3.delete_object(Bucket=bucket, Key="fs/up/cold.bin")             # ...and the only copy
    (cache / "up/c.txt").unlink()                                     # an entry without bytes
    (files / "new").mkdir()
    (files / "new/orphan.txt").write_bytes(b"orphan")                 # bytes nobody recorded
    (cache / "new2").mkdir()
    (cache / "new2/stray.txt").write_bytes(b"stray")
    s3.put_object(Bucket=bucket, Key="fs/zz/unknown.txt", Body=b"?")  # an object nobody knows
    with contextlib.closing(db(data)) as conn, conn:
        conn.execute("UPDATE files SET inode = 1 WHERE path = 'loc/z.txt'")  # a stale inode
    expected = {("missing", "loc/x.txt"), ("corrupt", "loc/y.txt"),
                ("corrupt-cache", "up/a.txt"), ("remote-missing", "up/b.txt"),
                ("remote-missing", "up/cold.bin"), ("cache-entry", "up/c.txt"),
                ("orphan", "new/orphan.txt"), ("orphan-cache", "new2/stray.txt"),
                ("remote-unknown", "zz/unknown.txt"), ("inode", "loc/z.txt")}

    report = cli(data, "verify", "--remote", "--json", **remote)
    assert report.exit_code == 1
    found = findings(report)
    assert set(found) == expected
    assert all(repair is None for repair in found.values())  # without --repair nothing changes
    assert (cache / "new2/stray.txt").exists() and file_row(view(data), "loc/x.txt")

    repaired = cli(data, "verify", "--remote", "--repair", "--json", **remote)
    assert repaired.exit_code == 1  # something was wrong, even though most of it is fixed now
    done = findings(repaired)
    assert set(done) == expected
    unrepaired = {key for key, repair in done.items() if repair is None}
    assert unrepaired == {("corrupt", "loc/y.txt"), ("remote-unknown", "zz/unknown.txt")}
    summary = json.loads(repaired.stdout)["summary"]
    assert summary["problems"] == 10 and summary["repaired"] == 8

    # What each repair claims, on disk and in the registry.
    store = view(data)
    assert file_row(store, "loc/x.txt") is None and queue_row(store, "loc/x.txt") is None
    assert "no good copy anywhere" in done[("missing", "loc/x.txt")]
    assert (files / "loc/y.txt").read_bytes() != LOCAL["loc/y.txt"]  # the only bytes stay
    assert (files / "loc/y.txt").stat().st_size == 200
    quarantined = list((data / "quarantine").rglob("a.txt"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes()[500] == ord("a") ^ 0xFF
    assert not (cache / "up/a.txt").exists() and file_row(store, "up/a.txt")["location"] == "remote"
    b = file_row(store, "up/b.txt")
    assert b["location"] == "local" and (files / "up/b.txt").read_bytes() == UPLOADED["up/b.txt"]
    assert b["inode"] == (files / "up/b.txt").stat().st_ino
    assert queue_row(store, "up/b.txt")["op"] == "upload"
    assert file_row(store, "up/cold.bin") is None
    orphan = file_row(store, "new/orphan.txt")
    assert orphan["size"] == 6 and queue_row(store, "new/orphan.txt")["op"] == "upload"
    stray = file_row(store, "new2/stray.txt")
    assert stray["location"] == "local" and (files / "new2/stray.txt").read_bytes() == b"stray"
    assert not (cache / "new2").exists()
    assert file_row(store, "loc/z.txt")["inode"] == (files / "loc/z.txt").stat().st_ino
    assert s3.get_object(Bucket=bucket, Key="fs/zz/unknown.txt")["Body"].read() == b"?"
    with contextlib.closing(db(data)) as conn:  # the counters followed every change
        assert conn.execute("SELECT value FROM counters WHERE name = 'files'").fetchone()[0] \
            == conn.execute("SELECT count(*) FROM files").fetchone()[0] == 7
        assert conn.execute("SELECT value FROM counters WHERE name = 'cache.entries'"
                            ).fetchone()[0] == conn.execute(
            "SELECT count(*) FROM cache_entries").fetchone()[0] == 0

    again = cli(data, "verify", "--remote", "--json", **remote)
    assert set(findings(again)) == unrepaired  # the rest is clean now
    text = cli(data, "verify", "--remote", **remote)
    assert text.exit_code == 1 and "Traceback" not in text.output
    assert "corrupt: loc/y.txt: the SHA-256 of the bytes in files/" in text.stdout
    assert "2 problems; `filestore verify --repair`" in text.stdout


def test_cloud_copy_replaces_lost_local_bytes_of_a_file_moved_back(make_server, moto, bucket,
                                                                   tmp_path):
    """A file moved back from the cloud is local again while the cloud still holds the copy;
    if its local bytes rot, the repair proves the cloud copy (download, hash) and uses it."""
    data = tmp_path / "data"
    remote = s3_overrides(moto, bucket)
    server = make_server(data, upload__delay="0s", **remote)
    body = os.urandom(3000)
    with server.client() as client:
        client.put("/files/m.bin", content=body)
        client.put("/files/other.bin", content=b"o" * 3000)  # same size, other bytes
        wait_for(lambda: uploaded(server, "m.bin") and uploaded(server, "other.bin"))
    server.stop()
    # The move back as the move-to-local job records it: bytes to files/, row local, the
    # cloud copy kept (remote, remote_key stay).
    (data / "files").mkdir(exist_ok=True)
    for path in ("m.bin", "other.bin"):
        os.replace(data / "cache" / path, data / "files" / path)
    with contextlib.closing(db(data)) as conn, conn:
        conn.execute("DELETE FROM cache_entries")
        conn.execute("UPDATE files SET location = 'local', uploaded_at = NULL, "
                     "remote_etag = NULL")
    flip(data / "files/m.bin")
    moto.client().put_object(Bucket=bucket, Key="fs/other.bin", Body=b"p" * 3000)  # replaced
    flip(data / "files/other.bin")

    result = cli(data, "verify", "--remote", "--repair", "--json", **remote)
    done = findings(result)
    assert set(done) == {("corrupt", "m.bin"), ("corrupt", "other.bin")}
    assert "pointed the row back at its cloud copy" in done[("corrupt", "m.bin")]
    assert done[("corrupt", "other.bin")] is None  # that cloud copy is not the same bytes
    assert file_row(view(data), "m.bin")["location"] == "remote"
    assert not (data / "files/m.bin").exists()
    assert list((data / "quarantine").rglob("m.bin"))
    server = make_server(data, **remote)
    with server.client() as client:
        assert client.get("/files/m.bin").content == body


def test_leftover_of_an_answered_delete_is_removed_not_adopted(make_server, tmp_path):
    """A DELETE drops the row, queues the remote delete, then unlinks the bytes in a second
    transaction; a crash between the two leaves bytes the user deleted: verify --repair
    finishes the DELETE rather than bringing the file back."""
    data = tmp_path / "data"
    server = make_server(data, upload__delay="0s", upload__delete_delay="1h")
    with server.client() as client:
        client.put("/files/gone.txt", content=b"deleted by its owner")
        client.put("/files/kept.txt", content=b"still here")
        wait_for(lambda: counters(server)["cache.entries"] == 2)
    server.stop()
    store = Store(load_settings(environ=env_for(data)))
    try:  # what the DELETE's first transaction commits
        with store.registry.transaction() as tx:
            record = tx.files.get("gone.txt")
            tx.files.delete("gone.txt")
            tx.queue.schedule("gone.txt", "delete", record.version, "default",
                              time.time() + 3600, time.time())
    finally:
        store.close()

    done = findings(cli(data, "verify", "--repair", "--json"))
    assert set(done) == {("orphan-cache", "gone.txt")}
    assert done[("orphan-cache", "gone.txt")].startswith("removed: the leftover of a DELETE")
    assert not (data / "cache/gone.txt").exists() and file_row(view(data), "gone.txt") is None
    assert queue_row(view(data), "gone.txt")["op"] == "delete"  # the remote copy still goes
    assert cli(data, "verify").exit_code == 0


def test_verify_and_repair_while_a_server_runs(tmp_path, serve_process, moto, bucket):
    """verify --repair beside a `filestore serve` under PUT/DELETE traffic: only the inflicted
    damage is reported, no "database is locked", and nothing is uploaded twice."""
    s3 = moto.client()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = tmp_path / "data"
    remote = s3_overrides(moto, bucket)
    server = serve_process(data, upload__delay="0s", **remote).start()
    store = view(data)
    bodies = {f"keep/{i}.bin": os.urandom(4096 + i) for i in range(8)}
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        wait_for(lambda: all(uploaded(store, path) for path in bodies), timeout=30)
    wait_for(lambda: (data / "cache/keep/1.bin").exists())
    s3.delete_object(Bucket=bucket, Key="fs/keep/0.bin")
    flip(data / "cache/keep/1.bin")
    (data / "files/orphan.txt").write_bytes(b"found")

    stop, errors = threading.Event(), []

    def churn() -> None:
        with server.client() as client:
            i = 0
            while not stop.is_set():
                path = f"/files/churn/{i % 5}.txt"
                for response in (client.put(path, content=os.urandom(100 + i)),
                                 client.get("/files/keep/2.bin"), client.delete(path)):
                    if response.status_code >= 300:
                        errors.append((response.request.method, response.status_code))
                i += 1

    traffic = threading.Thread(target=churn)
    traffic.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "filestore", "verify", "--remote", "--repair", "--json"],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env_for(data),
                                                             **server.env})
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert not errors
    assert "locked" not in result.stderr and "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    done = findings(result)
    assert set(done) == {("remote-missing", "keep/0.bin"), ("corrupt-cache", "keep/1.bin"),
                         ("orphan", "orphan.txt")}
    assert all(done.values())

    with server.client() as client:  # any write wakes the queue: the re-queued upload goes now
        client.put("/files/nudge.txt", content=b"n")
    wait_for(lambda: all(uploaded(store, path) for path in ("keep/0.bin", "orphan.txt",
                                                            "nudge.txt")), timeout=30)
    wait_for(lambda: not file_row(store, "churn/0.txt") and queue_row(store, "churn/0.txt")
             is None, timeout=30)
    again = cli(data, "verify", "--remote", **remote)
    assert again.exit_code == 0, again.output
    versions = s3.list_object_versions(Bucket=bucket, Prefix="fs/keep/")["Versions"]
    uploads = {v["Key"]: sum(1 for w in versions if w["Key"] == v["Key"]) for v in versions}
    assert uploads == {f"fs/{path}": 2 if path == "keep/0.bin" else 1 for path in bodies}
    with server.client() as client:
        assert client.get("/files/keep/1.bin").content == bodies["keep/1.bin"]  # downloaded again


def test_backup_then_restore_then_verify(make_server, tmp_path):
    data = tmp_path / "data"
    server = make_server(data, upload__delay="0s")  # the embedded file:// remote
    with server.client() as client:
        for path in ("a.txt", "b.txt"):
            client.put(f"/files/{path}", content=path.encode() * 50)
        wait_for(lambda: counters(server)["cache.entries"] == 2)  # uploaded, and settled
        backup = tmp_path / "registry.backup"
        assert cli(data, "backup", str(backup)).exit_code == 0
        client.put("/files/c.txt", content=b"after the backup")
        client.delete("/files/a.txt")
        wait_for(lambda: uploaded(server, "c.txt") and queue_row(server, "a.txt") is None)

        refused = cli(data, "restore", str(backup))  # a server runs on this data directory
        assert refused.exit_code == 1
        assert refused.stderr.strip().count("\n") == 0 and "stop it" in refused.stderr
    server.stop()

    restored = cli(data, "restore", str(backup), "--remote")
    assert restored.exit_code == 1, restored.output  # the registry is older than the bytes
    assert "is the registry of" in restored.stdout and "replaced-" in restored.stdout
    for line in ("remote-missing: a.txt", "cache-entry: a.txt", "orphan-cache: c.txt",
                 "remote-unknown: c.txt"):  # deleted, and written, after the backup
        assert line in restored.stdout
    assert len(list(data.glob("registry.sqlite3.replaced-*"))) == 1  # the old one is kept
    repaired = findings(cli(data, "verify", "--remote", "--repair", "--json"))
    assert set(repaired) == {("remote-missing", "a.txt"), ("cache-entry", "a.txt"),
                             ("orphan-cache", "c.txt"), ("remote-unknown", "c.txt")}
    assert "dropped the row" in repaired[("remote-missing", "a.txt")]
    assert "adopted" in repaired[("orphan-cache", "c.txt")]
    assert cli(data, "verify", "--remote").exit_code == 0
    server = make_server(data)
    with server.client() as client:
        assert client.get("/files/c.txt").content == b"after the backup"
        assert client.get("/files/b.txt").content == b"b.txt" * 50
        assert client.get("/files/a.txt").status_code == 404


@pytest.mark.parametrize(("content", "needle"), [
    (b"not a database at all, just text" * 10, "not a SQLite database"),
    (None, "newer than this filestore"),
    (b"", "not a filestore registry"),
])
def test_restore_refuses_what_is_not_a_registry(tmp_path, content, needle):
    data = tmp_path / "data"
    source = tmp_path / "source.sqlite3"
    if content is None:  # a registry from a newer filestore
        assert cli(data, "backup", str(source)).exit_code == 0
        with contextlib.closing(sqlite3.connect(source)) as conn:
            conn.execute("PRAGMA user_version = 999")
    else:
        source.write_bytes(content)
    before = (data / "registry.sqlite3").read_bytes() if content is None else None
    result = cli(data, "restore", str(source))
    assert result.exit_code == 2
    assert needle in result.stderr and result.stderr.strip().count("\n") == 0
    if before is not None:
        assert (data / "registry.sqlite3").read_bytes() == before  # untouched


# -- several remotes (storage plans) -------------------------------------------------------------

def plan_config(tmp_path: Path, moto, bucket: str, rules: str, name: str = "plan.toml"
                ) -> dict[str, str]:
    """Overrides for two remotes: "default" on moto, "archive" a directory; `rules` the
    [[plan]] tables. Several configs of one test share the remotes."""
    config = tmp_path / name
    config.write_text(f'[remotes.archive]\nurl = "file://{tmp_path / "archive"}"\n\n{rules}\n')
    return {"config": str(config), **s3_overrides(moto, bucket)}


REC_TO_ARCHIVE = '[[plan]]\nprefix = "rec/"\nremote = "archive"\n'
PLANNED = {"rec/a.wav": b"A" * 1500, "rec/b.wav": os.urandom(2500), "doc/k.pdf": b"%PDF" * 300}


def upload_all(make_server, data: Path, bodies: dict[str, bytes], **overrides: str) -> None:
    server = make_server(data, upload__delay="0s", **overrides)
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
        wait_for(lambda: all(uploaded(server, path) for path in bodies))
    server.stop()


def evict(data: Path, overrides: dict[str, str], *paths: str) -> None:
    store = Store(load_settings(environ=env_for(data, **overrides)))
    try:
        for path in paths:
            assert anyio.run(store.evict, path)  # now only the cloud has it
    finally:
        store.close()


def test_two_remotes_each_row_against_its_own_remote(make_server, moto, bucket, tmp_path):
    data, archive = tmp_path / "data", tmp_path / "archive"
    remotes = plan_config(tmp_path, moto, bucket, REC_TO_ARCHIVE)
    upload_all(make_server, data, PLANNED, **remotes)
    assert {path: file_row(view(data), path)["remote"] for path in PLANNED} == {
        "rec/a.wav": "archive", "rec/b.wav": "archive", "doc/k.pdf": "default"}

    clean = cli(data, "verify", "--remote", "--json", **remotes)
    assert clean.exit_code == 0, clean.output
    summary = json.loads(clean.stdout)["summary"]
    assert summary["objects"] == 3 and summary["remotes"] == ["default", "archive"]
    text = cli(data, "verify", "--remote", **remotes)
    assert "3 remote objects in 2 remotes: all good" in text.stdout, text.output

    (archive / "rec/a.wav").unlink()                                  # lost by the archive
    (archive / "rec/zz.wav").write_bytes(b"nobody's")                 # no row claims it
    (archive / "doc").mkdir()
    (archive / "doc/k.pdf").write_bytes(b"a stray")                   # its row says "default"
    with contextlib.closing(db(data)) as conn, conn:                  # a remote since removed
        conn.execute("UPDATE files SET remote = 'gone' WHERE path = 'rec/b.wav'")
    result = cli(data, "verify", "--remote", "--json", **remotes)
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    found = {(f["kind"], f["path"]): f for f in document["findings"]}
    assert set(found) == {("remote-missing", "rec/a.wav"), ("remote-unknown", "rec/zz.wav"),
                          ("remote-unknown", "doc/k.pdf"), ("remote-not-configured", "rec/b.wav"),
                          ("remote-unknown", "rec/b.wav")}
    assert len(found) == len(document["findings"])
    assert found[("remote-missing", "rec/a.wav")]["remote"] == "archive"
    assert "the remote 'archive' has no object" in found[("remote-missing", "rec/a.wav")]["detail"]
    assert found[("remote-unknown", "rec/zz.wav")]["remote"] == "archive"
    assert "records the file in the remote 'default'" in found[("remote-unknown",
                                                               "doc/k.pdf")]["detail"]
    assert "add [remotes.gone] back" in found[("remote-not-configured", "rec/b.wav")]["detail"]
    assert found[("remote-unknown", "rec/b.wav")]["remote"] == "archive"
    assert all(f["repair"] is None for f in document["findings"])
    assert "Traceback" not in cli(data, "verify", "--remote", **remotes).output


def test_repair_queues_where_the_plan_sends_a_file_now(make_server, moto, bucket, tmp_path):
    """The plan changed since the uploads: a file the archive lost goes up to the remote the
    plan names now, one the plan keeps local is not queued, and one lost everywhere but in
    another remote is recorded there."""
    data, archive = tmp_path / "data", tmp_path / "archive"
    before = plan_config(tmp_path, moto, bucket, REC_TO_ARCHIVE + '[[plan]]\nprefix = "doc/"\n'
                         'remote = "archive"\n')
    upload_all(make_server, data, PLANNED, **before)
    now = plan_config(tmp_path, moto, bucket, '[[plan]]\ncontent_type = "application/pdf"\n'
                      'upload = false\n', name="now.toml")  # rec/ goes to "default" now
    s3 = moto.client()
    for path in PLANNED:
        (archive / path).unlink()
    evict(data, now, "rec/b.wav")
    s3.put_object(Bucket=bucket, Key="fs/rec/b.wav", Body=PLANNED["rec/b.wav"])

    done = findings(cli(data, "verify", "--remote", "--repair", "--json", **now))
    assert set(done) == {("remote-missing", path) for path in PLANNED}
    assert "re-queued its upload to the remote 'default'" in done[("remote-missing", "rec/a.wav")]
    assert queue_row(view(data), "rec/a.wav")["remote"] == "default"
    assert "keeps it local" in done[("remote-missing", "doc/k.pdf")]
    assert queue_row(view(data), "doc/k.pdf") is None
    assert file_row(view(data), "doc/k.pdf")["location"] == "local"
    assert "copy in the remote 'default'" in done[("remote-missing", "rec/b.wav")]
    b = file_row(view(data), "rec/b.wav")
    assert (b["location"], b["remote"], b["remote_key"]) == ("remote", "default", "fs/rec/b.wav")

    server = make_server(data, upload__delay="0s", **now)
    wait_for(lambda: uploaded(server, "rec/a.wav") and queue_row(server, "rec/a.wav") is None)
    assert s3.get_object(Bucket=bucket, Key="fs/rec/a.wav")["Body"].read() == PLANNED["rec/a.wav"]
    with server.client() as client:
        assert client.get("/files/rec/b.wav").content == PLANNED["rec/b.wav"]
    server.stop()
    again = cli(data, "verify", "--remote", **now)
    assert again.exit_code == 0, again.output


def test_restore_finds_each_file_in_its_remote(make_server, moto, bucket, tmp_path):
    """A backup taken before the uploads: the restored rows know no remote. `verify --remote
    --repair` finds each file in the remote that holds its bytes and records that name; a path
    both remotes hold goes to the one the plan routes it to, and the other copy is reported."""
    data = tmp_path / "data"
    remotes = plan_config(tmp_path, moto, bucket, REC_TO_ARCHIVE)
    bodies = {"rec/r.wav": os.urandom(3000), "doc/d.txt": b"d" * 700}
    server = make_server(data, upload__delay="0s", upload__enabled="false", **remotes)
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    server.stop()
    backup = tmp_path / "registry.backup"
    assert cli(data, "backup", str(backup), **remotes).exit_code == 0
    server = make_server(data, upload__delay="0s", **remotes)
    wait_for(lambda: all(uploaded(server, path) for path in bodies))
    server.stop()
    evict(data, remotes, *bodies)
    moto.client().put_object(Bucket=bucket, Key="fs/rec/r.wav", Body=bodies["rec/r.wav"])

    restored = cli(data, "restore", str(backup), "--remote", **remotes)
    assert restored.exit_code == 1, restored.output
    for line in ("missing: rec/r.wav", "missing: doc/d.txt"):
        assert line in restored.stdout
    done = findings(cli(data, "verify", "--remote", "--repair", "--json", **remotes))
    assert set(done) == {("missing", "rec/r.wav"), ("missing", "doc/d.txt"),
                         ("remote-unknown", "rec/r.wav")}
    assert "copy in the remote 'archive'" in done[("missing", "rec/r.wav")]
    assert "copy in the remote 'default'" in done[("missing", "doc/d.txt")]
    assert done[("remote-unknown", "rec/r.wav")] is None  # the other copy: reported, left
    assert {path: (file_row(view(data), path)["location"], file_row(view(data), path)["remote"])
            for path in bodies} == {"rec/r.wav": ("remote", "archive"),
                                    "doc/d.txt": ("remote", "default")}
    again = json.loads(cli(data, "verify", "--remote", "--json", **remotes).stdout)
    assert [(f["kind"], f["path"], f["remote"]) for f in again["findings"]] == [
        ("remote-unknown", "rec/r.wav", "default")]
    server = make_server(data, **remotes)
    with server.client() as client:
        for path, body in bodies.items():
            assert client.get(f"/files/{path}").content == body
