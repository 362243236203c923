"""`filestore move-to-cloud`, `move-to-local`, `token --rotate` and `settings`: subprocesses on a
real data directory, alone and beside a running `filestore serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from conftest import counters, file_row, wait_for

FILESTORE = [sys.executable, "-m", "filestore"]


def run(args: list[str], data: Path, timeout: float = 60, **env: str) -> Any:
    environ = {**os.environ, "FILESTORE_STORAGE__DATA_DIR": str(data),
               "FILESTORE_STORAGE__MIN_FREE": "0", "FILESTORE_CACHE__MIN_FREE": "0",
               **{f"FILESTORE_{k.upper()}": v for k, v in env.items()}}
    environ.pop("FILESTORE_CONFIG", None)
    return subprocess.run(FILESTORE + args, capture_output=True, text=True, timeout=timeout,
                          env=environ)


def put_files(make_server: Any, data: Path, count: int) -> dict[str, bytes]:
    """Files written through a server that then stops: local, cooling down for 10 minutes."""
    server = make_server(data, upload__delay="10m")
    bodies = {f"j/{i}.bin": os.urandom(5000 + i) for i in range(count)}
    with server.client() as client:
        for path, body in bodies.items():
            assert client.put(f"/files/{path}", content=body).status_code == 201
    server.stop()
    return bodies


def test_moves_run_here_when_no_server_runs(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    bodies = put_files(make_server, data, 5)
    result = run(["move-to-cloud", "--wait"], data)
    assert result.returncode == 0, result.stderr
    assert "job 1 done: 5 files" in result.stdout and "0 errors" in result.stdout
    remote = data / "remote"
    for path, body in bodies.items():
        assert (remote / path).read_bytes() == body

    result = run(["move-to-local", "--delete-remote", "--wait"], data)
    assert result.returncode == 0, result.stderr
    assert "job 2 done: 5 files" in result.stdout
    for path, body in bodies.items():
        assert (data / "files" / path).read_bytes() == body
        assert not (remote / path).exists()  # the queue's delete ran here too
    stats = json.loads(run(["stats", "--json"], data).stdout)
    assert stats["files"]["local"]["count"] == 5 and stats["job"]["kind"] == "move-to-local"


def test_without_wait_the_next_server_runs_the_job(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    bodies = put_files(make_server, data, 3)
    result = run(["move-to-cloud"], data)
    assert result.returncode == 0 and "starts with the next `filestore serve`" in result.stdout
    refused = run(["move-to-local"], data)  # one move at a time
    assert refused.returncode == 1 and "job 1 (move-to-cloud) is queued" in refused.stderr
    server = make_server(data, upload__delay="10m")
    wait_for(lambda: counters(server)["files.remote"] == 3, timeout=30)
    assert all(file_row(server, p)["location"] == "remote" for p in bodies)


def test_wait_follows_a_job_the_server_runs(serve_process: Any, make_server: Any,
                                            tmp_path: Path) -> None:
    data = tmp_path / "data"
    bodies = put_files(make_server, data, 4)
    serve_process(data, upload__delay="10m").start()
    result = run(["move-to-cloud", "--wait"], data)
    assert result.returncode == 0, result.stderr
    assert "job 1 done: 4 files" in result.stdout
    for path, body in bodies.items():
        assert (data / "remote" / path).read_bytes() == body


def test_move_to_local_that_cannot_fit_is_refused(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = make_server(data, upload__delay="0s")
    with server.client() as client:
        assert client.put("/files/x.bin", content=b"x" * 5000).status_code == 201
        wait_for(lambda: counters(server)["cache.entries"] == 1)  # uploaded, moved to the cache
        assert client.post("/admin/api/files/x.bin/evict").status_code == 200
    server.stop()
    result = run(["move-to-local"], data, storage__min_free="1000TiB")
    assert result.returncode == 1
    assert result.stderr.startswith("filestore: error: moving everything to local needs")
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_rotation_reaches_a_running_server(serve_process: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve_process(data).start()
    old = server.token
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/files/", headers={"authorization": f"Bearer {old}"}
                          ).status_code == 200
        result = run(["token", "--rotate"], data)
        assert result.returncode == 0
        new = result.stdout.strip()
        assert new != old and new == server.token
        wait_for(lambda: client.get("/files/", headers={"authorization": f"Bearer {old}"}
                                    ).status_code == 401, timeout=10)
        assert client.get("/files/", headers={"authorization": f"Bearer {new}"}
                          ).status_code == 200
    configured = run(["token", "--rotate"], data, auth__token="fixed-token")
    assert configured.returncode == 2 and "auth.token in the config" in configured.stderr


def test_settings_show_and_reset(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = make_server(data)
    r = server.client().put("/admin/api/settings", json={"upload": {"delay": "45s"}})
    assert r.status_code == 200, r.text
    shown = run(["settings", "show"], data).stdout
    assert "upload.delay = 45s  [saved from the admin page]" in shown
    assert "remote.secret_access_key = (not set)  [config]" in shown
    result = run(["settings", "reset"], data)
    assert result.returncode == 0 and "forgot 1 saved value" in result.stdout
    wait_for(lambda: server.store.settings.upload.delay == 600, timeout=10)


def test_import_move_deletes_sources_only_once_stored(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    tree = tmp_path / "incoming"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "one.wav").write_bytes(b"one" * 1000)
    (tree / "two.pdf").write_bytes(b"two")
    (tree / "three.txt").write_bytes(b"333")
    (tree / "bad\x01name.txt").write_bytes(b"kept")
    # An earlier copy-import stored two.pdf (as if a move crashed after its commit), and
    # three.txt was registered with other bytes of the same size.
    assert run(["import", str(tree / "two.pdf")], data).returncode != 0  # not a directory
    single = tmp_path / "single"
    single.mkdir()
    (single / "two.pdf").write_bytes(b"two")
    (single / "three.txt").write_bytes(b"xyz")
    assert run(["import", str(single)], data).returncode == 0
    result = run(["import", str(tree), "--move"], data)
    assert result.returncode == 1, result.stderr  # the bad name was skipped, and kept
    assert "1 files (2.9 KiB) imported, 2 already there, 2 skipped; 2 source files deleted" \
        in result.stdout
    assert "three.txt: the store holds other bytes under 'three.txt'" in result.stderr
    remaining = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    # one.wav and two.pdf are gone, and the directories one.wav left empty; three.txt's
    # bytes differ from the stored ones, so it stays, as does the name no path may have.
    assert remaining == ["bad\x01name.txt", "three.txt"]
    server = make_server(data)
    with server.client() as client:
        assert client.get("/files/a/b/one.wav").content == b"one" * 1000
        assert client.get("/files/two.pdf").content == b"two"


def test_import_move_of_two_spellings_of_one_name_keeps_the_second(make_server: Any,
                                                                    tmp_path: Path) -> None:
    """NFC and NFD spellings of "café.txt" are one path once stored: the first found is taken,
    the other is refused and its source kept (it used to replace the first, and `--move`
    deleted both sources, keeping one file)."""
    data = tmp_path / "data"
    tree = tmp_path / "incoming"
    tree.mkdir()
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    (tree / nfc).write_bytes(b"composed")
    (tree / nfd).write_bytes(b"decomposed, longer")
    result = run(["import", str(tree), "--move"], data)
    assert result.returncode == 1, result.stderr
    assert "1 files" in result.stdout and "1 skipped" in result.stdout, result.stdout
    assert "once Unicode-normalised (NFC)" in result.stderr
    remaining = [p.name for p in tree.iterdir()]
    assert len(remaining) == 1  # one source imported and deleted, the other kept
    server = make_server(data)
    with server.client() as client:
        stored = client.get(f"/files/{nfc}").content
    kept = (tree / remaining[0]).read_bytes()
    assert {stored, kept} == {b"composed", b"decomposed, longer"}  # nothing lost
