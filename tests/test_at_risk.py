"""Data at risk, as figures: the files meant for the cloud (an upload queued, pending or failed)
with no verified copy there yet, their bytes, how long ago the oldest was written and how long
ago the longest-failed upload failed. Checked against a recount of the registry, through the
registry's own writes, migration 8 over an older registry, and a real server's API, CLI, page
and /metrics (moto's S3 as the cloud)."""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils
from click.testing import CliRunner
from conftest import LiveServer, registry_db, s3_overrides, wait_for
from test_admin import sign_in
from test_metrics import scrape, value

from filestore.cli import main
from filestore.registry.migrations import MIGRATIONS, SCHEMA_VERSION
from filestore.registry.sqlite import SqliteRegistry
from filestore.stats import age_text

FAST_RETRY = {"upload__retry_base": "0.05s", "upload__retry_max": "0.2s"}
KEEP_LOCAL = '[[plan]]\nprefix = "keep/"\nupload = false\n'


def recount(conn: sqlite3.Connection) -> dict[str, Any]:
    """The figures the slow way: every queued upload joined with its file."""
    files, size = conn.execute(
        "SELECT count(*), COALESCE(SUM(f.size), 0) FROM queue q LEFT JOIN files f "
        "ON f.path = q.path WHERE q.op = 'upload'").fetchone()
    oldest = conn.execute(
        "SELECT q.path, f.modified FROM queue q JOIN files f ON f.path = q.path "
        "WHERE q.op = 'upload' ORDER BY f.modified, q.path LIMIT 1").fetchone()
    failed = conn.execute(
        "SELECT path, updated FROM queue WHERE op = 'upload' AND state = 'failed' "
        "ORDER BY updated LIMIT 1").fetchone()
    return {"files": files, "bytes": size,
            "oldest": None if oldest is None else (oldest[0], oldest[1]),
            "failed": None if failed is None else (failed[0], failed[1])}


def counted(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = 'unprotected.bytes'")
               .fetchone()[0])


def server_recount(server: LiveServer) -> dict[str, Any]:
    with contextlib.closing(registry_db(server)) as conn:
        return recount(conn)


# -- the registry: the counter and the seeks against a recount, through every kind of write ----


def test_the_counter_and_the_seeks_match_a_recount_through_every_write(tmp_path: Path) -> None:
    """A random run of the writes the store, the workers, the page and the moves make: after
    each transaction the bytes counter, the oldest unprotected file and the longest-failed
    upload are what a recount finds."""
    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    check = sqlite3.connect(tmp_path / "registry.sqlite3")
    rng = random.Random(8)
    paths = [f"p/{i}" for i in range(6)]
    clock = [1_000_000.0]
    kinds: set[str] = set()

    def tick() -> float:
        clock[0] += rng.uniform(0.5, 5)
        return clock[0]

    for _ in range(600):
        path, now = rng.choice(paths), tick()
        with registry.transaction() as tx:
            record, entry = tx.files.get(path), tx.queue.get(path)
            kind = rng.choice(["put", "put", "put-local", "delete", "drop", "fail", "retry",
                               "upload-now", "uploaded", "lease", "finish-stale"])
            kinds.add(kind)
            if kind in ("put", "put-local"):  # as store._record_put
                version = tx.files.upsert(path, rng.randrange(1, 10_000), "s", "t", 1,
                                          now)[1].version
                if kind == "put":
                    tx.queue.schedule(path, "upload", version, "default", now + 600, now)
                elif entry is not None and entry.op == "upload":
                    tx.queue.drop(path)
            elif kind == "delete" and record is not None:  # as store._delete
                tx.files.delete(path)
                if record.remote is not None:
                    tx.queue.schedule(path, "delete", record.version, record.remote, now, now)
                elif entry is not None:
                    tx.queue.drop(path)
            elif kind == "drop":
                tx.queue.drop(path)
            elif kind == "fail" and entry is not None:
                tx.queue.fail(entry, "boom", None if rng.random() < 0.6 else now + 5, now)
            elif kind == "retry":
                tx.queue.retry(None if rng.random() < 0.3 else path, now)
            elif kind == "upload-now" and record is not None and record.location == "local":
                tx.queue.upload_now(path, record.version, "default", now)
            elif kind == "uploaded" and entry is not None and entry.op == "upload" and \
                    record is not None and record.version == entry.version:
                tx.files.mark_uploaded(path, "default", path, "etag", record.size, now)
                tx.queue.finish(entry)
            elif kind == "lease":
                tx.queue.lease_due("w", now + 1000, now + 1060, 3)
            elif kind == "finish-stale" and entry is not None:
                tx.queue.finish(entry)  # its lease owner is gone: released, or dropped
        truth = recount(check)
        read = registry.read
        assert counted(check) == truth["bytes"]
        assert read.queue.unprotected_oldest() == truth["oldest"]
        assert read.queue.failed_oldest("upload") == truth["failed"]
        assert read.counters.get("queue.upload.pending") + read.counters.get(
            "queue.upload.failed") == truth["files"]
    assert kinds >= {"put", "put-local", "delete", "fail", "uploaded"}
    check.close()
    registry.close()


def test_migration_8_counts_what_an_older_registry_queued(tmp_path: Path) -> None:
    """A registry of schema 7 with uploads pending and failed, a remote delete, and an upload
    whose file is gone: migration 8 counts them, and the triggers keep the count from then on
    (a re-PUT of another size, an upload turned into a remote delete)."""
    path = tmp_path / "registry.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for migration in MIGRATIONS[:7]:
        migration(db)
    conn.execute("PRAGMA user_version = 7")
    rows = [("a", 100, 10.0, "upload", "pending"), ("b", 200, 5.0, "upload", "failed"),
            ("c", 400, 1.0, "delete", "pending"), ("d", 800, 2.0, None, None)]
    for name, size, modified, op, state in rows:
        conn.execute("INSERT INTO files (path, size, sha256, content_type, created, modified) "
                     "VALUES (?, ?, 's', 't', ?, ?)", (name, size, modified, modified))
        if op:
            conn.execute("INSERT INTO queue (path, op, version, remote, not_before, state, "
                         "created, updated) VALUES (?, ?, 1, 'default', 0, ?, ?, ?)",
                         (name, op, state, modified, modified + 1))
    conn.execute("INSERT INTO queue (path, op, version, remote, not_before, state, created, "
                 "updated) VALUES ('gone', 'upload', 1, 'default', 0, 'pending', 0, 0)")
    conn.close()

    registry = SqliteRegistry(path)
    registry.migrate()
    assert registry.schema_version() == SCHEMA_VERSION
    check = sqlite3.connect(path)
    assert counted(check) == 300 == recount(check)["bytes"]
    assert registry.read.queue.unprotected_oldest() == ("b", 5.0)
    assert registry.read.queue.failed_oldest("upload") == ("b", 6.0)
    # Run again (a crash before user_version moved): the same figures, nothing counted twice.
    MIGRATIONS[7](sqlite_utils.Database(registry._writable()._conn))
    assert counted(check) == 300
    with registry.transaction() as tx:
        tx.files.upsert("a", 1000, "s", "t", 1, 20.0)
        tx.queue.schedule("b", "delete", 1, "default", 30.0, 30.0)
    assert counted(check) == 1000 == recount(check)["bytes"]
    assert registry.read.queue.unprotected_oldest() == ("a", 20.0)
    assert registry.read.queue.failed_oldest("upload") is None
    check.close()
    registry.close()


def test_the_figures_are_index_seeks_never_a_scan(tmp_path: Path) -> None:
    """What the statistics and every scrape run: each statement one search of its own partial
    index, with thousands of rows in the queue."""
    registry = SqliteRegistry(tmp_path / "registry.sqlite3")
    registry.migrate()
    with registry.transaction() as tx:
        for i in range(3000):
            version = tx.files.upsert(f"f/{i}", i, "s", "t", 1, float(i))[1].version
            tx.queue.schedule(f"f/{i}", "upload" if i % 3 else "delete", version, "default",
                              float(i), float(i))
    conn = registry.read._conn
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    registry.read.queue.unprotected_oldest()
    registry.read.queue.failed_oldest("upload")
    conn.set_trace_callback(None)
    assert len(statements) == 2
    # (The statements as run, their parameters filled in.)
    plans = [" / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
             for sql in statements]
    assert plans[0].startswith("SEARCH queue USING INDEX queue_unprotected"), plans[0]
    assert plans[1].startswith("SEARCH queue USING INDEX queue_failed_since"), plans[1]
    assert all("SCAN" not in plan for plan in plans), plans
    registry.close()


# -- a real server: the API, the CLI and /metrics ------------------------------------------------


def put(client: Any, path: str, body: bytes) -> None:
    reply = client.put(f"/files/{path}", content=body)
    assert reply.status_code in (200, 201), reply.text


def cli_stats(server: LiveServer, config: Path | None, *args: str) -> str:
    """`filestore stats` on the server's data directory, while the server runs."""
    env = {"FILESTORE_STORAGE__DATA_DIR": str(server.settings.data_dir)}
    if config is not None:
        env["FILESTORE_CONFIG"] = str(config)
    result = CliRunner().invoke(main, ["stats", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def check_api(server: LiveServer, client: Any) -> dict[str, Any]:
    """The API's figures, each equal to the recount (the ages at the API's own clock)."""
    stats = client.get("/admin/api/stats").json()
    risk, truth = stats["at_risk"], server_recount(server)
    assert (risk["files"], risk["bytes"]) == (truth["files"], truth["bytes"])
    if truth["oldest"] is None:
        assert risk["oldest_seconds"] is None and risk["oldest_path"] is None
    else:
        assert risk["oldest_path"] == truth["oldest"][0]
        assert abs(risk["oldest_seconds"] - (stats["time"] - truth["oldest"][1])) < 0.002
    if truth["failed"] is None:
        assert risk["failed_oldest_seconds"] is None
    else:
        assert risk["failed_oldest_path"] == truth["failed"][0]
        assert abs(risk["failed_oldest_seconds"] - (stats["time"] - truth["failed"][1])) < 0.002
    return risk  # type: ignore[no-any-return]


def check_metrics(server: LiveServer) -> dict[Any, float]:
    """/metrics, equal to the recount (each age between the clocks before and after)."""
    before = time.time()
    samples = scrape(server)
    after = time.time()
    truth = server_recount(server)
    assert value(samples, "filestore_unprotected_files") == truth["files"]
    assert value(samples, "filestore_unprotected_bytes") == truth["bytes"]
    for name, found in (("filestore_unprotected_oldest_seconds", truth["oldest"]),
                        ("filestore_failed_upload_oldest_seconds", truth["failed"])):
        seen = value(samples, name)
        if found is None:
            assert seen == 0
        else:
            assert before - found[1] - 0.002 <= seen <= after - found[1] + 0.002, name
    return samples


def test_the_figures_follow_puts_reputs_and_uploads(make_server: Any, moto: Any, bucket: str,
                                                    tmp_path: Path) -> None:
    config = tmp_path / "filestore.toml"
    config.write_text(KEEP_LOCAL)
    server = make_server(config=config, upload__delay="1h", **s3_overrides(moto, bucket))
    with server.client() as client:
        put(client, "a/1.bin", b"1" * 1000)
        put(client, "keep/x.bin", b"k" * 5000)  # kept local by the plan: not at risk
        first = check_api(server, client)
        assert first["files"] == 1 and first["bytes"] == 1000
        assert first["oldest_path"] == "a/1.bin"
        put(client, "a/2.bin", b"2" * 2000)
        grown = check_api(server, client)
        assert (grown["files"], grown["bytes"]) == (2, 3000)
        assert grown["oldest_path"] == "a/1.bin"
        assert grown["oldest_seconds"] > first["oldest_seconds"]
        # A re-PUT of a bigger body: its row stays, its bytes change.
        put(client, "a/2.bin", b"2" * 7000)
        assert (check_api(server, client)["bytes"]) == 8000
        # A re-PUT starts the file's age again: the other file is the oldest now.
        put(client, "a/1.bin", b"1" * 1000)
        risk = check_api(server, client)
        assert (risk["files"], risk["bytes"], risk["oldest_path"]) == (2, 8000, "a/2.bin")
        samples = check_metrics(server)
        assert value(samples, "filestore_unprotected_files") == 2
        assert value(samples, "filestore_unprotected_bytes") == 8000

        # The CLI shows the same (its own clock for the ages).
        shown = json.loads(cli_stats(server, config, "--json"))["at_risk"]
        assert (shown["files"], shown["bytes"], shown["oldest_path"]) == (2, 8000, "a/2.bin")
        assert shown["oldest_seconds"] >= risk["oldest_seconds"]
        text = cli_stats(server, config)
        assert "at risk   2 files (7.8 KiB) with no verified cloud copy yet, the oldest " \
               "written " in text and "ago (a/2.bin)" in text

        # Uploaded: they fall to nothing.
        for path in ("a/1.bin", "a/2.bin"):
            assert client.post(f"/admin/api/files/{path}/upload").status_code == 200
        wait_for(lambda: client.get("/admin/api/stats").json()["at_risk"]["files"] == 0,
                 timeout=30)
        done = check_api(server, client)
        assert done == {"files": 0, "bytes": 0, "oldest_seconds": None, "oldest_path": None,
                        "failed_oldest_seconds": None, "failed_oldest_path": None}
        check_metrics(server)
        assert "at risk   none" in cli_stats(server, config)


def test_a_failed_upload_shows_how_long_ago_it_failed(make_server: Any, moto: Any) -> None:
    """An upload to a bucket that does not exist fails for good at once: the file stays at
    risk, and the age of the oldest failed upload appears everywhere."""
    server = make_server(upload__delay="0s", **FAST_RETRY,
                         **s3_overrides(moto, "no-such-bucket-at-risk"))
    with server.client() as client:
        put(client, "bad/1.txt", b"x" * 321)
        wait_for(lambda: server_recount(server)["failed"] is not None, timeout=30)
        risk = check_api(server, client)
        assert (risk["files"], risk["bytes"]) == (1, 321)
        assert risk["failed_oldest_path"] == "bad/1.txt"
        assert risk["failed_oldest_seconds"] is not None
        samples = check_metrics(server)
        assert value(samples, "filestore_failed_upload_oldest_seconds") > 0
        assert value(samples, "filestore_queue_entries", op="upload", state="failed") == 1
        # A second failure later: the oldest is still the first.
        put(client, "bad/2.txt", b"y")
        wait_for(lambda: client.get("/admin/api/stats").json()["queue"]["upload"]["failed"]
                 == 2, timeout=30)
        later = check_api(server, client)
        assert later["failed_oldest_path"] == "bad/1.txt"
        assert later["failed_oldest_seconds"] >= risk["failed_oldest_seconds"]
        assert "the oldest failed upload failed " in cli_stats(server, None)


# -- the page: the figures, and their live refresh ----------------------------------------------


def test_the_page_shows_the_figures_and_refreshes_them(browser: Any, make_server: Any) -> None:
    from playwright.sync_api import expect

    server = make_server(upload__delay="1h")
    client = server.client()
    put(client, "a/1.bin", b"1" * 1000)
    # As the server renders it, before any script runs.
    session, _ = sign_in(server)
    html = session.get("/admin").text
    session.close()
    assert re.search(r'data-stat="at_risk.oldest_seconds" data-format="ago">\d+ s ago<', html)
    assert 'data-stat="at_risk.oldest_path" data-format="text">a/1.bin<' in html
    assert 'data-stat="at_risk.failed_oldest_seconds" data-format="ago">none<' in html
    assert 'data-stat="at_risk.bytes" data-format="size">1,000 B<' in html
    page = browser.new_page()
    page.set_default_timeout(20_000)
    page.goto(server.url + "/admin")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Data at risk")).to_be_visible()
    expect(page.locator('[data-stat="at_risk.files"]')).to_have_text("1")
    expect(page.locator('[data-stat="at_risk.bytes"]')).to_have_text("1,000 B")
    expect(page.locator('[data-stat="at_risk.oldest_path"]')).to_have_text("a/1.bin")
    expect(page.locator('[data-stat="at_risk.oldest_seconds"]')).to_have_text(
        re.compile(r"^\d+ s ago$"))
    expect(page.locator('[data-stat="at_risk.failed_oldest_seconds"]')).to_have_text("none")
    expect(page.locator('[data-stat="at_risk.failed_oldest_path"]')).to_have_text("none")
    # The script's refresh brings a new file in, without a reload.
    put(client, "a/2.bin", b"2" * 3000)
    expect(page.locator('[data-stat="at_risk.files"]')).to_have_text("2")
    expect(page.locator('[data-stat="at_risk.bytes"]')).to_have_text("3.9 KiB")
    expect(page.locator('[data-stat="at_risk.oldest_path"]')).to_have_text("a/1.bin")
    # The script writes an age as the CLI does.
    for seconds in (0, 59.9, 60, 3599, 3600, 5400, 86399, 86400, 9_000_000):
        assert page.evaluate(f"ageText({seconds})") == age_text(seconds), seconds
    page.close()
    client.close()
