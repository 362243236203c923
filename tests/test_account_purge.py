"""Purging an account (`queue/purge.py`): `DELETE /admin/api/accounts/ID?purge=true` suspends it at
once and runs a job that deletes every file under `ID/`, cloud copies included (also with
`upload.delete_delay = "never"`), then the account; another account's files are untouched. A
remote delete that gives up fails the job and keeps the account; the CLI runs the same job
when no server does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import LiveServer, Moto, s3_overrides, uploaded, wait_for
from faults import FaultProxy
from test_accounts import as_account, create

from filestore.cli import main

pytestmark = pytest.mark.timeout(120)


def keys(moto: Moto, bucket: str) -> list[str]:
    found = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in found)


def job_of(server: LiveServer, job_id: int) -> dict[str, Any]:
    with server.client() as owner:
        reply = owner.get(f"/admin/api/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())


def test_a_purge_deletes_the_files_their_cloud_copies_and_then_the_account(
        make_server: Any, moto: Moto, bucket: str) -> None:
    server: LiveServer = make_server(**s3_overrides(moto, bucket), upload__delay="0",
                                     upload__delete_delay="never")
    with server.client() as owner:
        acme, bob = create(owner, "acme"), create(owner, "bob")
    with as_account(server, acme) as a, as_account(server, bob) as b:
        for n in range(12):
            assert a.put(f"/files/acme/f{n:02}.txt", content=b"x" * n).status_code == 201
        assert b.put("/files/bob/keep.txt", content=b"bob's").status_code == 201
        wait_for(lambda: all(uploaded(server, f"acme/f{n:02}.txt") for n in range(12))
                 and uploaded(server, "bob/keep.txt"))
        with server.client() as owner:
            # One more, kept local (its upload not done): it goes too.
            assert owner.put("/files/acme/late.txt", content=b"late").status_code == 201
            reply = owner.delete("/admin/api/accounts/acme", params={"purge": "true"})
        assert reply.status_code == 202, reply.text
        job = reply.json()
        assert job["kind"] == "purge-account" and job["options"] == {"account": "acme"}
        assert reply.headers["location"] == f"/admin/api/jobs/{job['id']}"
        assert a.put("/files/acme/new.txt", content=b"no").status_code == 403  # suspended
        wait_for(lambda: job_of(server, job["id"])["state"] == "done", timeout=30)
        done = job_of(server, job["id"])
        assert done["done"] == 13 and done["errors"] == 0
        with server.client() as owner:
            assert owner.get("/admin/api/accounts/acme").status_code == 404
            assert owner.get("/files/acme/f01.txt").status_code == 404
            assert owner.get("/files/bob/keep.txt").content == b"bob's"
        assert keys(moto, bucket) == ["fs/bob/keep.txt"]  # "never" kept no copy of acme's
        assert a.get("/admin/api/accounts/acme").status_code == 401  # its tokens went too
        counters = server.service.counters()
        assert not [name for name in counters if name.startswith("account.acme.")]
        assert counters["account.bob.files"] == 1


def test_a_remote_delete_that_gives_up_fails_the_purge_and_keeps_the_account(
        make_server: Any, moto: Moto, bucket: str) -> None:
    proxy = FaultProxy(moto.port, http=True)
    try:
        overrides = {**s3_overrides(moto, bucket), "remote__endpoint_url":
                     f"http://127.0.0.1:{proxy.port}"}
        server: LiveServer = make_server(**overrides, upload__delay="0",
                                         upload__max_attempts="1")
        with server.client() as owner:
            create(owner, "acme")
            assert owner.put("/files/acme/a.txt", content=b"a").status_code == 201
            wait_for(lambda: uploaded(server, "acme/a.txt"))
            proxy.answer(403, "AccessDenied", method="DELETE", times=None)
            reply = owner.delete("/admin/api/accounts/acme?purge=true")
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["id"]
            wait_for(lambda: job_of(server, job_id)["state"] == "failed", timeout=30)
            failed = job_of(server, job_id)
            assert "1 remote deletes under 'acme/' gave up" in failed["last_error"]
            account = owner.get("/admin/api/accounts/acme").json()
            assert account["state"] == "suspended" and account["usage"]["files"] == 0
            # Once the store lets the delete through and it is retried, a new purge finishes.
            proxy.clear()
            assert owner.post("/admin/api/queue/retry", json={"all": True}).status_code == 200
            wait_for(lambda: keys(moto, bucket) == [])
            again = owner.delete("/admin/api/accounts/acme?purge=true").json()["id"]
            wait_for(lambda: job_of(server, again)["state"] == "done", timeout=30)
            assert owner.get("/admin/api/accounts/acme").status_code == 404
    finally:
        proxy.close()


def test_purge_from_the_command_line_runs_the_job_here(make_server: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server: LiveServer = make_server(data, upload__delay="0")
    with server.client() as owner:
        create(owner, "acme")
        for n in range(3):
            assert owner.put(f"/files/acme/{n}.txt", content=b"n").status_code == 201
        wait_for(lambda: all(uploaded(server, f"acme/{n}.txt") for n in range(3)))
    server.stop()
    env = {"FILESTORE_STORAGE__DATA_DIR": str(data), "FILESTORE_STORAGE__MIN_FREE": "0",
           "FILESTORE_CONFIG": ""}
    runner = CliRunner()
    refused = runner.invoke(main, ["accounts", "remove", "acme"], env=env)
    assert refused.exit_code == 1 and "holds 3 files" in refused.output
    result = runner.invoke(main, ["accounts", "remove", "acme", "--purge", "--wait"], env=env)
    assert result.exit_code == 0, result.output
    assert "purge-account: job 1 done: 3 files" in result.output
    shown = runner.invoke(main, ["accounts", "show", "acme", "--json"], env=env)
    assert shown.exit_code == 1 and "no account 'acme'" in shown.output
    assert not list((data / "remote").rglob("*.txt"))  # the embedded remote's copies went
    listed = json.loads(runner.invoke(main, ["accounts", "list", "--json"], env=env).stdout)
    assert listed == [] or listed.get("items") == []
