"""`/metrics` (Prometheus text, parsed with prometheus-client's own parser) moves with what the
server does, and `/readyz` tells what is not ready and why."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from conftest import LiveServer, ServeProcess, counters, s3_overrides, wait_for
from prometheus_client.parser import text_string_to_metric_families

from filestore import metrics


def scrape(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, by name and labels."""
    with server.client(auth=False) as anon:
        reply = anon.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_uploads_hits_and_misses(make_server: Any, moto: Any,
                                                    bucket: str) -> None:
    server = make_server(upload__delay="0s", **s3_overrides(moto, bucket))
    before = scrape(server)
    data = b"m" * 5000
    with server.client() as client:
        assert client.put("/files/a/one.bin", content=data).status_code == 201
        wait_for(lambda: value(scrape(server), "filestore_uploads_total")
                 == value(before, "filestore_uploads_total") + 1)
        # Uploaded: the bytes move to the cache area (right after), and a GET then is a hit.
        wait_for(lambda: counters(server)["cache.entries"] == 1)
        assert client.get("/files/a/one.bin").content == data
        assert client.post("/admin/api/files/a/one.bin/evict").status_code == 200
        assert client.get("/files/a/one.bin").content == data  # a miss, filled from S3
        assert client.get("/files/nope").status_code == 404

    def moved() -> dict[Any, float] | None:
        after = scrape(server)
        grew = value(after, "filestore_cache_misses_total") > value(
            before, "filestore_cache_misses_total")
        return after if grew else None

    after = wait_for(moved)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("filestore_uploaded_bytes_total") == len(data)
    assert delta("filestore_remote_attempts_total", op="upload", remote="default") == 1
    assert delta("filestore_remote_failures_total", op="upload", remote="default") == 0
    assert delta("filestore_cache_hits_total") >= 1
    assert delta("filestore_cache_misses_total") == 1
    assert delta("filestore_cache_fills_total") == 1
    assert delta("filestore_cache_evictions_total") == 0  # an evict by hand is not the GC's
    assert value(after, "filestore_cache_entries") >= 1
    assert value(after, "filestore_cache_bytes") >= len(data)
    assert value(after, "filestore_queue_entries", op="upload", state="pending") == 0
    assert value(after, "filestore_queue_oldest_due_seconds", op="upload") == 0
    # Per request: by route, method and status; bytes both ways; latency buckets cumulative.
    assert delta("filestore_http_requests_total", route="files", method="PUT", status="201") == 1
    assert delta("filestore_http_requests_total", route="files", method="GET", status="200") == 2
    assert delta("filestore_http_requests_total", route="files", method="GET", status="404") == 1
    assert delta("filestore_http_received_bytes_total", route="files") == len(data)
    assert delta("filestore_http_sent_bytes_total", route="files") >= 2 * len(data)
    count = delta("filestore_http_request_duration_seconds_count", route="files", method="GET")
    assert count == 3
    assert delta("filestore_http_request_duration_seconds_bucket", route="files", method="GET",
                 le="+Inf") == count
    assert delta("filestore_http_request_duration_seconds_bucket", route="files", method="GET",
                 le="30.0") == count
    assert delta("filestore_http_request_duration_seconds_sum", route="files", method="GET") > 0


def test_route_labels_are_bounded() -> None:
    assert metrics.route_of("/files/any/path/at/all.jpg") == "files"
    assert metrics.route_of("/files/") == "list"
    assert metrics.route_of("/admin/api/stats") == "admin_api"
    assert metrics.route_of("/admin") == "admin"
    assert metrics.route_of("/metrics") == "metrics"
    assert metrics.route_of("/wp-login.php") == "other"


def test_s3_requests_are_a_route_of_their_own(make_server: Any) -> None:
    """Whatever their paths look like: bucket "files" is `/files/...` on the S3 endpoint."""
    from test_s3 import admin_client

    server = make_server(s3=True)
    before = scrape(server)
    s3 = admin_client(server)
    s3.create_bucket(Bucket="files")
    s3.put_object(Bucket="files", Key="a.txt", Body=b"abc")
    assert s3.get_object(Bucket="files", Key="a.txt")["Body"].read() == b"abc"
    assert httpx.get(f"{server.s3_url}/files/a.txt").status_code == 403  # unsigned
    with server.client() as files:
        assert files.get("/files/files/a.txt").content == b"abc"

    def delta(samples: dict[Any, float], name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    def counted() -> dict[Any, float] | None:
        after = scrape(server)
        return after if delta(after, "filestore_http_requests_total", route="files",
                              method="GET", status="200") == 1 else None

    after = wait_for(counted)
    assert delta(after, "filestore_http_requests_total", route="s3", method="PUT",
                 status="200") == 2
    assert delta(after, "filestore_http_requests_total", route="s3", method="GET",
                 status="200") == 1
    assert delta(after, "filestore_http_requests_total", route="s3", method="GET",
                 status="403") == 1
    assert delta(after, "filestore_http_received_bytes_total", route="s3") == 3
    assert delta(after, "filestore_http_sent_bytes_total", route="s3") >= 3
    assert delta(after, "filestore_http_request_duration_seconds_count", route="s3",
                 method="GET") == 2
    assert delta(after, "filestore_http_sent_bytes_total", route="files") == 3  # /files/'s own
    assert delta(after, "filestore_http_requests_total", route="other", method="GET",
                 status="403") == 0


def test_readyz_reports_each_check(server: LiveServer) -> None:
    with server.client(auth=False) as anon:
        assert anon.get("/healthz").json() == {"status": "ok"}
        terse = anon.get("/readyz")
    with server.client() as client:
        reply = client.get("/readyz")
    # Without the token: the status alone, no data path, no remote endpoints.
    assert terse.status_code == 200 and terse.json() == {"status": "ready"}, terse.text
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"registry", "disk", "remote.default"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_is_503_when_the_remote_is_unreachable_or_the_disk_low(
        make_server: Any, moto: Any, bucket: str) -> None:
    overrides = s3_overrides(moto, bucket)
    overrides["remote__url"] = f"s3://{bucket}-missing/fs"  # a bucket that does not exist
    server = make_server(storage__min_free="1000000TiB", **overrides)
    with server.client(auth=False) as anon:
        terse = anon.get("/readyz")
    with server.client() as client:
        reply = client.get("/readyz")
    assert terse.status_code == 503 and terse.json() == {"status": "not_ready"}, terse.text
    assert str(server.settings.data_dir) not in terse.text
    assert reply.status_code == 503, reply.text
    checks = reply.json()["checks"]
    assert reply.json()["status"] == "not_ready"
    assert checks["registry"]["ok"] is True
    assert checks["disk"]["ok"] is False and "storage.min_free" in checks["disk"]["detail"]
    assert checks["remote.default"]["ok"] is False and checks["remote.default"]["detail"]


@pytest.mark.slow  # two worker processes take ~5-10 s to start on this 2-core machine
def test_every_worker_process_is_counted(tmp_path: Any) -> None:
    proc = ServeProcess(tmp_path / "data", server__workers="2")
    proc.env.pop(metrics.MULTIPROC_ENV, None)  # set in this process by the servers above
    proc.start()
    metrics_dir = tmp_path / "data" / "metrics"
    made = 0
    try:
        # A new connection each (no keep-alive): the kernel spreads them over the workers.
        with httpx.Client(base_url=proc.url, timeout=10,
                          limits=httpx.Limits(max_keepalive_connections=0)) as fresh:

            def both_workers_wrote() -> bool:
                nonlocal made
                for _ in range(10):
                    assert fresh.get("/no-such-route").status_code == 404
                    made += 1
                writers = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
                return len(writers) >= 2

            wait_for(both_workers_wrote, timeout=20, interval=0.1)

        def counted() -> float:
            reply = httpx.get(f"{proc.url}/metrics", timeout=10)
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(reply.text) for s in f.samples}
            return value(samples, "filestore_http_requests_total", route="other",
                         method="GET", status="404")

        # Whichever worker answers the scrape adds up every worker's files: all, once each.
        wait_for(lambda: counted() == made, timeout=10)
    finally:
        proc.stop()


def test_json_access_log_has_a_line_per_request_without_the_query(make_server: Any) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    server = make_server(server__access_log="json")
    logger = logging.getLogger("filestore.access")
    collect = Collect()
    logger.addHandler(collect)
    try:
        with server.client() as client:
            client.put("/files/log/a.txt", content=b"abc")
            client.get("/files/log/a.txt?expires=1&sig=secret")
            wait_for(lambda: len(lines) == 2)  # logged once the answer went out
    finally:
        logger.removeHandler(collect)
    put, get = (json.loads(line) for line in lines)
    assert put["method"] == "PUT" and put["status"] == 201 and put["bytes_in"] == 3
    assert get["path"] == "/files/log/a.txt" and get["status"] == 403
    assert "secret" not in "".join(lines) and get["seconds"] >= 0
