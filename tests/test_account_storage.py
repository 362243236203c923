"""Storage per account (`account_storage.py`): an account's own remotes and plan rules, set at run
time through `/admin/api/accounts/ID/storage`, against a moto server that checks credentials
(two IAM users, each allowed only its own bucket, and the operator's for the global bucket): an
account's files land in its bucket with its keys and the others' in the global remote; each
remote is probed on save with the failing step named; secrets never come back, never reach the
log, a page or a backup in clear; stranding is refused; an account's remote touches only the
keys under the account's prefix."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from click.testing import CliRunner
from conftest import LiveServer, free_port, recorded_remote, registry_db, uploaded, wait_for
from test_accounts import as_account, create

from filestore.cli import main

pytestmark = pytest.mark.timeout(120)

_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*",
     "Resource": ["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]}]}


class IamMoto:
    """A moto server of its own that checks every request's credentials (its authentication
    is switched on, as `INITIAL_NO_AUTH_ACTION_COUNT=0` does, once the users exist): each user
    may use only its own bucket."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=(tmp / "moto.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        wait_for(self._up, timeout=30)
        self.keys: dict[str, tuple[str, str]] = {}
        self.prefix = "fs"
        iam = self._client("iam", "x", "x")
        for user in ("operator", "alice", "bob"):
            bucket = f"{user}-bucket"
            self._client("s3", "x", "x").create_bucket(Bucket=bucket)
            iam.create_user(UserName=user)
            policy = json.dumps(_POLICY).replace("{bucket}", bucket)
            iam.put_user_policy(UserName=user, PolicyName="own-bucket", PolicyDocument=policy)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        # From now on every request must be signed by a user with the right to it.
        assert httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0").status_code == 200

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    def _client(self, service: str, key_id: str, secret: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret,
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def s3(self, user: str) -> Any:
        return self._client("s3", *self.keys[user])

    def objects(self, user: str) -> dict[str, bytes]:
        """The objects under this test's prefix in the user's bucket."""
        s3, bucket = self.s3(user), f"{user}-bucket"
        found = s3.list_objects_v2(Bucket=bucket, Prefix=f"{self.prefix}/").get("Contents", [])
        return {o["Key"].removeprefix(f"{self.prefix}/"):
                s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}

    def keys_of(self, user: str) -> list[str]:
        found = self.s3(user).list_objects_v2(Bucket=f"{user}-bucket", Prefix=f"{self.prefix}/")
        return [o["Key"] for o in found.get("Contents", [])]

    def remote(self, user: str, *, prefix: str = "", **changes: str) -> dict[str, str]:
        key_id, secret = self.keys[user]
        return {"url": f"s3://{user}-bucket/{self.prefix}{prefix}", "endpoint_url": self.url,
                "region": "us-east-1", "access_key_id": key_id, "secret_access_key": secret,
                **changes}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def iam_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamMoto]:
    server = IamMoto(tmp_path_factory.mktemp("iam-moto"))
    yield server
    server.stop()


@pytest.fixture
def iam_moto(iam_server: IamMoto) -> IamMoto:
    """The module's server, with a key prefix of this test's own in every bucket."""
    iam_server.prefix = f"t{uuid.uuid4().hex[:8]}"
    return iam_server


def storage_server(make_server: Any, moto: IamMoto, **overrides: str) -> LiveServer:
    key_id, secret = moto.keys["operator"]
    server: LiveServer = make_server(**{
        "remote__url": f"s3://operator-bucket/{moto.prefix}", "remote__endpoint_url": moto.url,
        "remote__region": "us-east-1", "remote__access_key_id": key_id,
        "remote__secret_access_key": secret, "upload__delay": "0",
        "storage__account_endpoints": moto.url, **overrides})
    return server


def put(client: httpx.Client, path: str, body: bytes, **headers: str) -> None:
    reply = client.put(f"/files/{path}", content=body, headers=headers)
    assert reply.status_code == 201, reply.text


def evict(server: LiveServer, path: str) -> None:
    with server.client() as owner:
        assert owner.post(f"/admin/api/files/{path}/evict").status_code == 200


def test_each_account_uploads_to_its_own_bucket_with_its_own_keys(
        make_server: Any, iam_moto: IamMoto) -> None:
    server = storage_server(make_server, iam_moto)
    with server.client() as owner:
        alice, bob = create(owner, "alice"), create(owner, "bob")
    with as_account(server, alice) as a, as_account(server, bob) as b:
        reply = a.put("/admin/api/accounts/alice/storage", json={
            "remotes": {"own": iam_moto.remote("alice")}, "plan": [{"remote": "own"}]})
        assert reply.status_code == 200, reply.text
        saved = reply.json()
        assert saved["tested"] is True and "alice-bucket" in saved["remote"]
        assert saved["remotes"]["own"]["secret_access_key_set"] is True
        assert iam_moto.keys["alice"][1] not in reply.text
        put(a, "alice/rec/1.wav", b"alice's recording", **{"content-type": "audio/wav"})
        put(b, "bob/notes.txt", b"bob's notes")
        wait_for(lambda: uploaded(server, "alice/rec/1.wav") and uploaded(server, "bob/notes.txt"))
        assert iam_moto.objects("alice") == {"alice/rec/1.wav": b"alice's recording"}
        assert iam_moto.objects("operator") == {"bob/notes.txt": b"bob's notes"}
        # Read back from the account's bucket once the cache no longer has it.
        evict(server, "alice/rec/1.wav")
        assert a.get("/files/alice/rec/1.wav").content == b"alice's recording"
        usage = a.get("/admin/api/accounts/alice").json()["usage"]
        assert usage["remotes"] == {"alice:own": len(b"alice's recording")}
        shown = a.get("/admin/api/accounts/alice/storage").json()
        assert shown["remotes"]["own"]["files"] == 1
        assert shown["plan"] == [{"remote": "own"}]


def test_the_probe_refuses_credentials_the_store_refuses_and_saves_nothing(
        make_server: Any, iam_moto: IamMoto) -> None:
    server = storage_server(make_server, iam_moto)
    with server.client() as owner:
        alice = create(owner, "alice")
    with as_account(server, alice) as a:
        cases = {
            "a wrong secret": iam_moto.remote("alice", secret_access_key="wrong"),
            "another user's bucket": iam_moto.remote("alice", url="s3://bob-bucket/fs"),
            "no such bucket": iam_moto.remote("alice", url="s3://nowhere-bucket/fs"),
        }
        for case, remote in cases.items():
            reply = a.put("/admin/api/accounts/alice/storage", json={"remotes": {"own": remote}})
            assert reply.status_code == 422, (case, reply.text)
            body = reply.json()
            assert body["error"] == "storage_test_failed" and body["step"] == "put", (case, body)
            assert "wrong" not in body["detail"] and iam_moto.keys["alice"][1] not in reply.text
            assert a.get("/admin/api/accounts/alice/storage").json()["remotes"] == {}, case
        assert iam_moto.objects("bob") == {}  # the probe left nothing anywhere


def test_what_an_account_may_not_configure(make_server: Any, iam_moto: IamMoto,
                                            tmp_path: Path) -> None:
    server = storage_server(make_server, iam_moto)
    with server.client() as owner:
        alice, bob = create(owner, "alice"), create(owner, "bob")
    good = iam_moto.remote("alice")
    refused = {
        "file:// remote": {"remotes": {"own": {**good, "url": f"file://{tmp_path}/x"}}},
        "the server's own credentials": {"remotes": {"own": {
            key: value for key, value in good.items()
            if key not in ("access_key_id", "secret_access_key")}}},
        "an endpoint the operator does not allow": {"remotes": {"own": {
            **good, "endpoint_url": "http://169.254.169.254"}}},
        "an unknown remote key": {"remotes": {"own": {**good, "part_size": "5MiB"}}},
        "a serving key in a rule": {"plan": [{"prefix": "x/", "inline": True}]},
        "a rule naming no remote": {"plan": [{"remote": "nowhere"}]},
        "a bad remote name": {"remotes": {"Own Bucket": good}},
        "a number for a secret": {"remotes": {"own": {**good, "secret_access_key": 12}}},
        "the global bucket": {"remotes": {"own": {
            **good, "url": f"s3://operator-bucket/{iam_moto.prefix}"}}},
        "an unknown key": {"remotes": {}, "quota": 1},
    }
    with as_account(server, alice) as a, as_account(server, bob) as b:
        for case, body in refused.items():
            reply = a.put("/admin/api/accounts/alice/storage", json=body)
            assert reply.status_code == 400, (case, reply.text)
            assert reply.json()["error"] == "bad_request", case
        # Another account's storage: refused whether it exists or not, and learns nothing.
        for target in ("alice", "nobody"):
            for method in ("GET", "PUT", "PATCH"):
                reply = b.request(method, f"/admin/api/accounts/{target}/storage", json={})
                assert reply.status_code == 403, (target, method, reply.text)
    # The administrator may leave an account's remote to the server's credentials.
    with server.client() as owner:
        reply = owner.put("/admin/api/accounts/bob/storage", json={"remotes": {"own": {
            "url": f"s3://operator-bucket/{iam_moto.prefix}-bob", "endpoint_url": iam_moto.url,
            "region": "us-east-1", **dict(zip(("access_key_id", "secret_access_key"),
                                              iam_moto.keys["operator"], strict=True))}}})
        assert reply.status_code == 200, reply.text


def test_rules_are_relative_to_the_account_and_come_before_the_plan(
        make_server: Any, iam_moto: IamMoto) -> None:
    server = storage_server(make_server, iam_moto)
    with server.client() as owner:
        alice = create(owner, "alice")
    with as_account(server, alice) as a:
        reply = a.put("/admin/api/accounts/alice/storage", json={
            "remotes": {"own": iam_moto.remote("alice")},
            "plan": [{"prefix": "rec/", "content_type": "audio/*", "remote": "own"},
                     {"prefix": "tmp/", "upload": False},
                     {"prefix": "shared/", "remote": "default"}]})
        assert reply.status_code == 200, reply.text
        put(a, "alice/rec/1.wav", b"1", **{"content-type": "audio/wav"})
        put(a, "alice/rec/notes.txt", b"2")  # not audio: the global plan
        put(a, "alice/tmp/scratch", b"3")
        put(a, "alice/shared/x", b"4")
        wait_for(lambda: all(uploaded(server, f"alice/{p}")
                             for p in ("rec/1.wav", "rec/notes.txt", "shared/x")))
        assert set(iam_moto.objects("alice")) == {"alice/rec/1.wav"}
        assert set(iam_moto.objects("operator")) == {"alice/rec/notes.txt",
                                                     "alice/shared/x"}
        assert not recorded_remote(server, "alice/tmp/scratch")
        route = server.service.route("alice/tmp/scratch", "text/plain")
        assert route.upload is False and route.account_rule == 2
        # Another account's paths never meet these rules.
        assert server.service.route("bob/rec/1.wav", "audio/wav").remote == "default"
    # The command line says which rule decides, and shows the account's storage.
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir), "FILESTORE_CONFIG": ""}
    checked = CliRunner().invoke(main, ["plan", "check", "alice/rec/2.wav"], env=env)
    assert checked.exit_code == 0, checked.output
    assert "the account's rule 1: prefix = \"rec/\", content_type = \"audio/*\", remote = " \
        "\"alice:own\"" in checked.output
    shown = CliRunner().invoke(main, ["accounts", "show", "alice"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"storage  own: s3://alice-bucket/{iam_moto.prefix} at {iam_moto.url}, 1 files" \
        in shown.output
    assert 'rule 2   prefix = "tmp/", upload = false' in shown.output
    assert iam_moto.keys["alice"][1] not in shown.output


def test_removing_or_moving_a_remote_that_holds_files_is_refused(
        make_server: Any, iam_moto: IamMoto) -> None:
    server = storage_server(make_server, iam_moto)
    with server.client() as owner:
        alice = create(owner, "alice")
    with as_account(server, alice) as a:
        document = {"remotes": {"own": iam_moto.remote("alice")}, "plan": [{"remote": "own"}]}
        assert a.put("/admin/api/accounts/alice/storage", json=document).status_code == 200
        put(a, "alice/a.txt", b"kept")
        wait_for(lambda: uploaded(server, "alice/a.txt"))
        moved = iam_moto.remote("alice", prefix="-elsewhere")
        for body in ({"remotes": {}, "plan": []},
                     {"remotes": {"own": moved}, "plan": [{"remote": "own"}]}):
            reply = a.put("/admin/api/accounts/alice/storage", json=body)
            assert reply.status_code == 409, reply.text
            assert "1 files in the cloud" in reply.json()["detail"]
        assert a.patch("/admin/api/accounts/alice/storage",
                       json={"remotes": {"own": None}, "plan": []}).status_code == 409
        # What leaves the objects where they are is fine: a new key pair, a PATCH of the plan.
        reply = a.patch("/admin/api/accounts/alice/storage", json={"plan": []})
        assert reply.status_code == 200 and reply.json()["tested"] is False
        assert reply.json()["remotes"]["own"]["secret_access_key_set"] is True
        evict(server, "alice/a.txt")
        assert a.get("/files/alice/a.txt").content == b"kept"
        # Once the file is gone (and its remote delete done), the remote may go.
        assert a.delete("/files/alice/a.txt").status_code == 204
        wait_for(lambda: iam_moto.keys_of("alice") == [])
        wait_for(lambda: a.put("/admin/api/accounts/alice/storage",
                               json={"remotes": {}}).status_code == 200)
        assert a.get("/admin/api/accounts/alice/storage").json() == {
            "account": "alice", "remotes": {}, "plan": []}


def test_secrets_stay_out_of_answers_logs_pages_and_backups(
        make_server: Any, iam_moto: IamMoto, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    server = storage_server(make_server, iam_moto)
    caplog.set_level(logging.DEBUG, logger="filestore")
    secret = iam_moto.keys["alice"][1]
    with server.client() as owner:
        alice = create(owner, "alice")
    with as_account(server, alice) as a:
        reply = a.put("/admin/api/accounts/alice/storage",
                      json={"remotes": {"own": iam_moto.remote("alice")}})
        assert reply.status_code == 200 and secret not in reply.text
        answers = [reply.text, a.get("/admin/api/accounts/alice/storage").text,
                   a.get("/admin/api/accounts/alice").text]
    with server.client() as owner:
        answers.append(owner.get("/admin/api/stats").text)
        answers.append(owner.get("/metrics").text)
    assert all(secret not in text for text in answers)
    saved = [r for r in caplog.records if getattr(r, "event", None) == "account.storage_saved"]
    assert len(saved) == 1 and saved[0].fields["remotes"] == ["own"]  # type: ignore[attr-defined]
    assert secret not in caplog.text and all(secret not in repr(r.__dict__)
                                             for r in caplog.records)
    stored = registry_db(server).execute("SELECT remotes FROM account_storage").fetchone()[0]
    assert secret not in stored and json.loads(stored)["own"]["secret_access_key"].startswith(
        "enc:v1:")
    backup = tmp_path / "backup.db"
    server.service.backup(backup)
    assert secret.encode() not in backup.read_bytes()


def test_an_accounts_remote_lists_and_cleans_up_only_under_its_prefix(
        make_server: Any, iam_moto: IamMoto, tmp_path: Path) -> None:
    """The account's bucket may hold its other data: filestore's listing (verify) and its
    clean-up of unfinished multipart uploads at start look under "ACCOUNT/" only."""
    data = tmp_path / "data"
    server = storage_server(make_server, iam_moto, storage__data_dir=str(data))
    with server.client() as owner:
        alice = create(owner, "alice")
    s3 = iam_moto.s3("alice")
    theirs = f"{iam_moto.prefix}/elsewhere.txt"
    s3.put_object(Bucket="alice-bucket", Key=theirs, Body=b"the customer's")
    unfinished = s3.create_multipart_upload(Bucket="alice-bucket",
                                            Key=f"{iam_moto.prefix}/big.bin")["UploadId"]
    # One that a crash of filestore's own upload would leave, under the account's prefix.
    s3.create_multipart_upload(Bucket="alice-bucket", Key=f"{iam_moto.prefix}/alice/crashed")
    with as_account(server, alice) as a:
        assert a.put("/admin/api/accounts/alice/storage", json={
            "remotes": {"own": iam_moto.remote("alice")},
            "plan": [{"remote": "own"}]}).status_code == 200
        put(a, "alice/a.txt", b"mine")
        wait_for(lambda: uploaded(server, "alice/a.txt"))
    server.stop()
    server = storage_server(make_server, iam_moto, storage__data_dir=str(data))
    listed = [o.path for o in _listing(server, "alice:own")]
    assert listed == ["alice/a.txt"]

    def unfinished_uploads() -> list[str]:
        found = s3.list_multipart_uploads(Bucket="alice-bucket", Prefix=iam_moto.prefix)
        return [u["UploadId"] for u in found.get("Uploads", [])]

    # The clean-up at start aborted filestore's own, and left the customer's.
    wait_for(lambda: unfinished_uploads() == [unfinished])
    assert s3.get_object(Bucket="alice-bucket", Key=theirs)["Body"].read() == b"the customer's"


def _listing(server: LiveServer, name: str) -> list[Any]:
    """The remote's listing, through a client of its own (the server's runs on its loop)."""
    from filestore.remote import open_remote

    async def run() -> list[Any]:
        settings = server.service.settings
        remote = open_remote(name, settings.named_remotes()[name], settings.data_dir)
        await remote.open()
        try:
            return [o async for o in remote.list_objects()]
        finally:
            await remote.close()

    return asyncio.run(run())
