"""deploy/prometheus/alerts.yml: Debian's promtool accepts the rules and passes their unit
tests (alerts_test.yml), every alert has a test that fires it, and every metric an alert reads
(with the label values it selects) is in a real /metrics scrape after a small workload."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
ALERTS, ALERTS_TEST = DEPLOY / "alerts.yml", DEPLOY / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's prometheus: .ci/run installs it)")
# Series Prometheus makes itself for every target, never in a /metrics answer.
PROMETHEUS_OWN = {"up"}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}
_NAME = r"(?<![\w:.])([A-Za-z_:][\w:]*)"


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its words that are neither functions,
    keywords, label names (in braces and grouping clauses) nor durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    return {m.group(1) for m in re.finditer(_NAME, text)
            if m.group(1) not in _KEYWORDS and not text[m.end():].lstrip().startswith("(")}


def selected_labels(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Each `name{label="value", ...}` selector's name and its equality matchers."""
    return [(m.group(1), dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m.group(2))))
            for m in re.finditer(_NAME + r"\s*\{([^}]*)\}", expr)]


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", str(ALERTS_TEST)], capture_output=True,
                            text=True, timeout=60, cwd=DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in rules()}
    assert len(alerts) == len(rules()) >= 9
    checks = [check for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for check in test["alert_rule_test"]]
    fired = {check["alertname"] for check in checks if check["exp_alerts"]}
    quiet = {check["alertname"] for check in checks if not check["exp_alerts"]}
    assert fired == alerts == quiet
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_metric_an_alert_reads_is_in_a_real_scrape(make_server: Any) -> None:
    """A server that uploaded a file: every name the alerts read is in its /metrics, with the
    label values they select (a failure counter included: it starts with the first attempt)."""
    # The expression reader finds names, and only names.
    expr = ('sum by (job, op) (rate(a_total{op="x", remote=~"y"}[15m])) / on (job) '
            'group_left (remote) b_seconds offset 5m > 1e9 and up{job="filestore"} == 0')
    assert metric_names(expr) == {"a_total", "b_seconds", "up"}
    assert selected_labels(expr) == [("a_total", {"op": "x"}), ("up", {"job": "filestore"})]

    server = make_server(upload__delay="0s")
    with server.client() as client:
        assert client.put("/files/up/now.txt", content=b"uploaded").status_code == 201
        wait_for(lambda: client.get("/admin/api/stats").json()["uploads"]["done"] == 1)
        reply = client.get("/metrics")
    assert reply.status_code == 200
    samples = [sample for family in text_string_to_metric_families(reply.text)
               for sample in family.samples]
    scraped = {sample.name for sample in samples}
    wanted: set[str] = set()
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        wanted |= names
        for name, labels in selected_labels(rule["expr"]):
            if name in PROMETHEUS_OWN:
                continue
            labels = {k: v for k, v in labels.items() if k not in TARGET_LABELS}
            assert any(sample.name == name and labels.items() <= sample.labels.items()
                       for sample in samples), (rule["alert"], name, labels)
    assert wanted - scraped == PROMETHEUS_OWN
    assert not PROMETHEUS_OWN & scraped
    # The new figures are there, each once.
    for name in ("filestore_unprotected_files", "filestore_unprotected_bytes",
                 "filestore_unprotected_oldest_seconds", "filestore_failed_upload_oldest_seconds",
                 "filestore_disk_free_bytes", "filestore_disk_min_free_bytes",
                 "filestore_cache_min_free_bytes"):
        assert [s.name for s in samples].count(name) == 1, name
    ready = {s.labels["check"]: s.value for s in samples if s.name == "filestore_ready"}
    assert ready == {"registry": 1.0, "disk": 1.0}
