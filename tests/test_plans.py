"""Storage plans: several named remotes, rules that route files to them by path prefix and
content type, and a registry that records where each file went, so changing the plan never
strands an uploaded file. Two buckets on moto's real S3 server; the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Moto, counters, file_row, queue_row, recorded_remote, uploaded, wait_for
from test_admin import sign_in

from filestore import plan
from filestore.config import load_settings
from filestore.errors import ConfigError
from filestore.remote import open_remotes

FILESTORE = [sys.executable, "-m", "filestore"]

RULES = """
[[plan]]
prefix = "recordings/"
remote = "archive"
upload_delay = "0s"

[[plan]]
content_type = "application/pdf"
upload = false

[[plan]]
content_type = "image/*"
remote = "archive"
keep_local = true
"""


def remote_toml(moto: Moto, section: str, bucket: str, prefix: str) -> str:
    return (f'[{section}]\nurl = "s3://{bucket}/{prefix}"\nendpoint_url = "{moto.url}"\n'
            'region = "us-east-1"\naccess_key_id = "test"\nsecret_access_key = "test"\n')


@pytest.fixture
def archive(moto: Moto) -> str:
    name = f"t-archive-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def write_config(tmp_path: Path, moto: Moto, bucket: str, archive: str) -> Any:
    """A config with the default remote on `bucket`, "archive" on `archive`, and `rules`."""
    def write(rules: str = RULES, name: str = "filestore.toml", named: bool = True) -> Path:
        config = tmp_path / name
        text = (f'[storage]\ndata_dir = "{tmp_path / "data"}"\nmin_free = "0"\n'
                '[cache]\nmin_free = "0"\n[upload]\ndelay = "0s"\n'
                + remote_toml(moto, "remote", bucket, "fs"))
        if named:
            text += remote_toml(moto, "remotes.archive", archive, "arch")
        config.write_text(text + rules)
        return config

    return write


def keys(moto: Moto, bucket: str) -> set[str]:
    listing = moto.client().list_objects_v2(Bucket=bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def put(client: httpx.Client, path: str, body: bytes, content_type: str) -> None:
    reply = client.put(f"/files/{path}", content=body, headers={"content-type": content_type})
    assert reply.status_code in (200, 201), reply.text


def run(args: list[str], config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FILESTORE, *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))


# -- the rules ------------------------------------------------------------------------------------


def settings_with(toml: str, tmp_path: Path) -> Any:
    config = tmp_path / "c.toml"
    config.write_text(toml + f'\n[storage]\ndata_dir = "{tmp_path / "d"}"\n')
    return load_settings(config, environ={})


def test_first_matching_rule_decides(tmp_path: Path) -> None:
    settings = settings_with('[upload]\ndelay = "10m"\n[remotes.archive]\nurl = "file:///srv/a"\n'
                             + RULES, tmp_path)
    route = plan.route(settings, "recordings/2026/call.wav", "audio/wav")
    assert (route.rule, route.remote, route.upload, route.delay) == (1, "archive", True, 0.0)
    # Rule 1 is first: a PDF under recordings/ is still uploaded.
    assert plan.route(settings, "recordings/fax.pdf", "application/pdf").rule == 1
    kept = plan.route(settings, "faxes/1.pdf", "application/pdf; charset=binary")
    assert (kept.rule, kept.upload) == (2, False)
    image = plan.route(settings, "photos/a.jpg", "IMAGE/JPEG")
    assert (image.rule, image.remote, image.keep_local, image.delay) == (3, "archive", True, 600.0)
    other = plan.route(settings, "docs/a.txt", "text/plain")
    assert (other.rule, other.remote, other.upload, other.delay) == (None, "default", True, 600.0)
    # "recordings" without the slash is another directory.
    assert plan.route(settings, "recordingsX/a.wav", "audio/wav").rule is None


@pytest.mark.parametrize(("toml", "needle"), [
    ('[[plan]]\nprefix = "a/"\nremote = "nowhere"\n',
     "plan[1].remote = 'nowhere' is not a configured remote (configured: default)"),
    ('[remote]\nurl = "file:///srv/a"\n[remotes.default]\nurl = "file:///srv/b"\n',
     "given twice, as [remote] and as [remotes.default]"),
    ('[remotes.Big_Name]\nurl = "file:///srv/a"\n', "remote name 'Big_Name'"),
    ('[remotes.a]\nurl = "file:///srv/a"\nbucket = "x"\n', "unknown key remotes.a.bucket"),
    ('[[plan]]\nprefix = "/abs/"\n', "plan[1].prefix = '/abs/'"),
    ('[[plan]]\nprefix = "a/../b/"\n', "plan[1].prefix"),
    ('[[plan]]\ncontent_type = "audio"\n', "plan[1].content_type = 'audio'"),
    ('[[plan]]\nupload_delay = "soon"\n', "plan[1].upload_delay = 'soon'"),
    ('[[plan]]\nremote = "default"\ncolour = "red"\n', "unknown key plan[1].colour"),
    ('plan = "everything"\n', "plan must be [[plan]] tables"),
    ('[remotes]\narchive = "s3://b"\n', "expected [remotes.NAME] tables"),
])
def test_bad_plans_and_remotes_are_one_line_config_errors(tmp_path: Path, toml: str,
                                                          needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(toml, tmp_path)
    assert needle in caught.value.detail
    assert "\n" not in caught.value.detail


def test_remotes_come_from_the_environment_too(tmp_path: Path) -> None:
    settings = load_settings(environ={
        "FILESTORE_STORAGE__DATA_DIR": str(tmp_path),
        "FILESTORE_REMOTES__ARCHIVE__URL": "s3://archive/x",
        "FILESTORE_REMOTES__ARCHIVE__REGION": "eu-west-1",
        "FILESTORE_REMOTES__DEFAULT__URL": "file:///srv/cold",
    })
    assert settings.remotes["archive"].url == "s3://archive/x"
    assert settings.remotes["archive"].region == "eu-west-1"
    assert settings.remote.url == "file:///srv/cold"
    with pytest.raises(ConfigError, match="FILESTORE_REMOTES__NAME__KEY"):
        load_settings(environ={"FILESTORE_REMOTES__ARCHIVE": "x"})


@pytest.mark.parametrize(("first", "second"), [
    ("s3://bucket/fs", "s3://bucket/fs"),
    ("s3://bucket/fs", "s3://bucket/fs/deeper"),
    ("s3://bucket", "s3://bucket/anything"),
    ("file:///srv/cold", "file:///srv/cold/inner"),
])
def test_remotes_that_would_share_keys_are_refused(tmp_path: Path, first: str,
                                                   second: str) -> None:
    settings = settings_with(f'[remote]\nurl = "{first}"\n[remotes.other]\nurl = "{second}"\n',
                             tmp_path)
    with pytest.raises(ConfigError, match="remotes 'default' and 'other' overlap"):
        open_remotes(settings)


def test_remotes_in_separate_places_are_fine(tmp_path: Path) -> None:
    settings = settings_with('[remote]\nurl = "s3://bucket/fs"\n[remotes.a]\nurl = "s3://bucket/fs2"\n'
                             '[remotes.b]\nurl = "s3://bucket/fs"\nendpoint_url = "http://minio:9000"\n'
                             '[remotes.c]\nurl = "s3://other/fs"\n', tmp_path)
    assert list(open_remotes(settings)) == ["default", "a", "b", "c"]


# -- end to end -----------------------------------------------------------------------------------


def test_each_file_lands_where_its_rule_says(make_server: Any, write_config: Any, moto: Moto,
                                             bucket: str, archive: str) -> None:
    server = make_server(config=write_config())
    with server.client() as client:
        put(client, "recordings/a.wav", b"call audio", "audio/wav")
        put(client, "recordings/fax.pdf", b"rule one first", "application/pdf")
        put(client, "docs/b.txt", b"plain text", "text/plain")
        put(client, "faxes/c.pdf", b"%PDF stays here", "application/pdf")
        put(client, "photos/d.jpg", b"jpeg bytes", "image/jpeg")
        for path in ("recordings/a.wav", "recordings/fax.pdf", "docs/b.txt"):
            wait_for(lambda p=path: uploaded(server, p), timeout=20)
        wait_for(lambda: recorded_remote(server, "photos/d.jpg"))  # kept local: see below
        assert keys(moto, archive) == {"arch/recordings/a.wav", "arch/recordings/fax.pdf",
                                       "arch/photos/d.jpg"}
        assert keys(moto, bucket) == {"fs/docs/b.txt"}
        assert {p: file_row(server, p)["remote"] for p in
                ("recordings/a.wav", "docs/b.txt", "photos/d.jpg")} == {
            "recordings/a.wav": "archive", "docs/b.txt": "default", "photos/d.jpg": "archive"}
        # upload = false: local, nothing queued, never in either bucket.
        row = file_row(server, "faxes/c.pdf")
        assert row["location"] == "local" and row["remote"] is None
        assert queue_row(server, "faxes/c.pdf") is None
        # keep_local from the image rule: the local copy stays after the upload.
        assert (server.settings.data_dir / "files" / "photos" / "d.jpg").exists()
        assert not (server.settings.data_dir / "files" / "docs" / "b.txt").exists()
        counts = counters(server)
        assert counts["files.remote.archive"] == 3 and counts["bytes.remote.archive"] == len(
            b"call audio") + len(b"rule one first") + len(b"jpeg bytes")
        assert counts["files.remote.default"] == 1
        stats = client.get("/admin/api/stats").json()["plan"]
        assert stats["remotes"]["archive"]["files"] == 3
        assert stats["remotes"]["archive"]["rules"] == [1, 3]
        assert [rule["number"] for rule in stats["rules"]] == [1, 2, 3]
        # "Upload now" of a file the plan keeps local is refused, and a move to the cloud
        # leaves it alone.
        refused = client.post("/admin/api/files/faxes/c.pdf/upload")
        assert refused.status_code == 409 and "keeps 'faxes/c.pdf' local" in refused.json()[
            "detail"]
        job = client.post("/admin/api/jobs", json={"kind": "move-to-cloud"}).json()
        final = wait_for(lambda: (lambda j: j if j["state"] == "done" else None)(
            client.get(f"/admin/api/jobs/{job['id']}").json()), timeout=20)
        assert final["total"] == 0
        assert file_row(server, "faxes/c.pdf")["location"] == "local"


def test_reads_and_deletes_use_the_recorded_remote_after_the_plan_changes(
        make_server: Any, write_config: Any, moto: Moto, bucket: str, archive: str) -> None:
    first = make_server(config=write_config())
    with first.client() as client:
        put(client, "recordings/a.wav", b"first take", "audio/wav")
        put(client, "recordings/b.wav", b"second call", "audio/wav")
        wait_for(lambda: uploaded(first, "recordings/a.wav") and uploaded(first,
                                                                           "recordings/b.wav"))
        for path in ("recordings/a.wav", "recordings/b.wav"):
            assert client.post(f"/admin/api/files/{path}/evict").status_code == 200
    first.stop()

    # The new plan sends recordings/ to the default remote; archive stays configured.
    second = make_server(config=write_config(rules="", name="changed.toml"))
    with second.client() as client:
        # A read of a file only the archive holds comes from the archive.
        assert client.get("/files/recordings/a.wav").content == b"first take"
        # A re-PUT goes where the plan says now, and its old copy in the archive goes.
        put(client, "recordings/a.wav", b"new take", "audio/wav")
        wait_for(lambda: file_row(second, "recordings/a.wav")["remote"] == "default"
                 and uploaded(second, "recordings/a.wav"), timeout=20)
        wait_for(lambda: "arch/recordings/a.wav" not in keys(moto, archive), timeout=20)
        assert "fs/recordings/a.wav" in keys(moto, bucket)
        # A DELETE of a file still in the archive deletes it there.
        assert client.delete("/files/recordings/b.wav").status_code == 204
        wait_for(lambda: "arch/recordings/b.wav" not in keys(moto, archive), timeout=20)
        counts = counters(second)
        assert counts["files.remote.archive"] == 0 and counts["files.remote.default"] == 1


def test_queued_uploads_follow_the_plan_in_force_when_they_go(
        make_server: Any, write_config: Any, moto: Moto, archive: str) -> None:
    # Queued while uploads are off, under a config with no rules...
    first = make_server(config=write_config(rules=""), upload__enabled="false")
    with first.client() as client:
        put(client, "recordings/late.wav", b"queued before the plan", "audio/wav")
        put(client, "faxes/keep.pdf", b"%PDF queued", "application/pdf")
        assert queue_row(first, "recordings/late.wav")["remote"] == "default"
    first.stop()
    # ... and uploaded under the plan: re-routed, or dropped when the plan keeps it local.
    second = make_server(config=write_config())
    wait_for(lambda: uploaded(second, "recordings/late.wav"), timeout=20)
    assert file_row(second, "recordings/late.wav")["remote"] == "archive"
    assert "arch/recordings/late.wav" in keys(moto, archive)
    wait_for(lambda: queue_row(second, "faxes/keep.pdf") is None)
    assert file_row(second, "faxes/keep.pdf")["location"] == "local"


def test_metrics_count_uploads_by_remote(make_server: Any, write_config: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server = make_server(config=write_config())
    with server.client() as client:
        put(client, "recordings/a.wav", b"12345", "audio/wav")
        put(client, "docs/b.txt", b"123", "text/plain")
        wait_for(lambda: uploaded(server, "recordings/a.wav") and uploaded(server, "docs/b.txt"))
        text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("filestore_remote_uploaded_bytes_total", (("remote", "archive"),))] == 5
    assert samples[("filestore_remote_uploaded_bytes_total", (("remote", "default"),))] == 3
    assert samples[("filestore_remote_files", (("remote", "archive"),))] == 1
    assert samples[("filestore_remote_uploads_total", (("remote", "default"),))] == 1


def test_each_remote_is_tested_on_save_and_guarded_while_it_holds_files(
        make_server: Any, write_config: Any, moto: Moto) -> None:
    server = make_server(config=write_config())
    with server.client() as client:
        shown = client.get("/admin/api/settings").json()
        assert set(shown["remotes"]) == {"archive"} and "url" in shown["remote"]
        assert "value" not in shown["remotes"]["archive"]["secret_access_key"]
        # A store that cannot be written fails its test, and nothing is saved.
        missing = {"remotes": {"archive": {"url": "s3://no-such-bucket-here/x"}}}
        failed = client.put("/admin/api/settings", json=missing)
        assert failed.status_code == 422 and failed.json()["step"] == "put"
        assert client.get("/admin/api/settings").json()["remotes"]["archive"]["url"][
            "saved"] is False
        # Unknown remotes are a 400 naming what can be changed.
        unknown = client.put("/admin/api/settings", json={"remotes": {"nope": {"region": "x"}}})
        assert unknown.status_code == 400 and "remotes.archive" in unknown.json()["detail"]
        # Moving the archive while it holds a file would strand it: 409, per remote.
        put(client, "recordings/a.wav", b"held", "audio/wav")
        wait_for(lambda: uploaded(server, "recordings/a.wav"))
        other = f"t-other-{uuid.uuid4().hex[:12]}"
        moto.client().create_bucket(Bucket=other)
        moved = client.put("/admin/api/settings",
                           json={"remotes": {"archive": {"url": f"s3://{other}/x"}}})
        assert moved.status_code == 409 and "remotes.archive.url" in moved.json()["detail"]
        # The default remote holds nothing: it may move (tested first).
        saved = client.put("/admin/api/settings", json={"remote": {"url": f"s3://{other}/d"}})
        assert saved.status_code == 200 and saved.json()["tested"] is True
        put(client, "docs/after.txt", b"goes to the moved default", "text/plain")
        wait_for(lambda: uploaded(server, "docs/after.txt"), timeout=20)
        assert "d/docs/after.txt" in keys(moto, other)
    # The pages show the plan, and a form for each remote.
    browser, _ = sign_in(server)
    with contextlib.closing(browser):
        dashboard = browser.get("/admin").text
        assert '<tr data-remote="archive"><th scope="row">archive</th>' in dashboard
        assert 'data-stat="plan.remotes.archive.files" data-format="count">1<' in dashboard
        assert "<code>content_type = &#34;application/pdf&#34;, upload = false</code>" in dashboard
        form = browser.get("/admin/settings").text
        assert "<legend>[remotes.archive]</legend>" in form
        assert 'name="remotes.archive.endpoint_url"' in form


def test_the_cli_tells_what_the_plan_does(write_config: Any, make_server: Any) -> None:
    config = write_config()
    checked = run(["plan", "check", "recordings/x.wav"], config)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith('recordings/x.wav (audio/x-wav): rule 1: '
                                     'prefix = "recordings/", remote = "archive"')
    assert "remote archive: s3://" in checked.stdout and "uploaded at once" in checked.stdout
    kept = run(["plan", "check", "faxes/1", "--type", "application/pdf"], config)
    assert "rule 2" in kept.stdout and "stays local" in kept.stdout
    answer = json.loads(run(["plan", "check", "docs/a.txt", "--json"], config).stdout)
    assert answer["rule"] is None and answer["remote"] == "default" and answer["now"] is None
    bad = run(["plan", "check", "../etc/passwd"], config)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    shown = run(["plan", "show"], config)
    assert "remote archive: s3://" in shown.stdout and "rule 3: content_type" in shown.stdout


def test_a_config_that_drops_a_remote_holding_files_is_refused(
        make_server: Any, write_config: Any) -> None:
    server = make_server(config=write_config())
    with server.client() as client:
        put(client, "recordings/a.wav", b"archived", "audio/wav")
        wait_for(lambda: uploaded(server, "recordings/a.wav"))
    server.stop()
    config = write_config(rules="", name="dropped.toml", named=False)
    result = run(["serve"], config)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "filestore: error: 1 files are in the cloud at the remote 'archive', which the config "
        "no longer names: add [remotes.archive] back (or move those files to local with the "
        "old config first)")


def test_upgrading_the_registry_counts_what_each_remote_holds(tmp_path: Path) -> None:
    """A registry from before storage plans: every uploaded file and upload so far belongs to
    the default remote, and the new per-remote counters start from those figures."""
    import sqlite3

    import sqlite_utils

    from filestore.registry import SqliteRegistry
    from filestore.registry.migrations import MIGRATIONS

    path = tmp_path / "registry.sqlite3"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    for migration in MIGRATIONS[:4]:
        migration(db)
    conn.execute("PRAGMA user_version = 4")
    for name, size, location, remote in [("a", 5, "remote", "default"), ("b", 7, "remote",
                                          "default"), ("c", 11, "local", None)]:
        conn.execute("INSERT INTO files (path, size, sha256, content_type, created, modified, "
                     "location, version, remote) VALUES (?, ?, '', 't', 0, 0, ?, 1, ?)",
                     (name, size, location, remote))
    conn.execute("UPDATE counters SET value = 3 WHERE name = 'uploads.done'")
    conn.execute("UPDATE counters SET value = 40 WHERE name = 'uploads.bytes'")
    conn.commit()
    conn.close()
    registry = SqliteRegistry(path)
    try:
        registry.migrate()
        found = registry.read.counters.all()
    finally:
        registry.close()
    assert found["files.remote.default"] == 2 and found["bytes.remote.default"] == 12
    assert found["uploads.done.default"] == 3 and found["uploads.bytes.default"] == 40


def test_leftovers_in_a_dropped_remote_are_warnings_not_refusals(tmp_path: Path) -> None:
    """Only files in the cloud at a dropped remote stop the start; older copies of local files
    and queued deletes there are named in warnings (their deletes fail until it is back)."""
    from filestore.registry import SqliteRegistry

    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    try:
        with registry.transaction() as tx:
            conn = tx._conn  # rows no PUT would make: written as SQL
            conn.execute("INSERT INTO files (path, size, sha256, content_type, created, "
                         "modified, location, version, remote) VALUES "
                         "('a', 1, '', 't', 0, 0, 'local', 1, 'old')")
            conn.execute("INSERT INTO queue (path, op, version, remote, not_before, attempts, "
                         "state, created, updated) VALUES "
                         "('b', 'delete', 2, 'gone', 0, 0, 'pending', 0, 0)")
        settings = load_settings(environ={"FILESTORE_STORAGE__DATA_DIR": str(tmp_path)})
        warnings = plan.check_recorded(settings, registry.read)
        assert len(warnings) == 2
        assert "older copies in the remote 'old'" in warnings[0]
        assert "1 queued remote deletes or uploads name the remote 'gone'" in warnings[1]
        with registry.transaction() as tx:
            tx._conn.execute("UPDATE files SET location = 'remote' WHERE path = 'a'")
        with pytest.raises(ConfigError, match="1 files are in the cloud at the remote 'old'"):
            plan.check_recorded(settings, registry.read)
    finally:
        registry.close()
