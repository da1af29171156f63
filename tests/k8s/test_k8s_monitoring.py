"""Alerts and dashboard against the metrics model-fetcher really exports (issue 5).

`make k8s-check` runs `promtool check rules` and `promtool test rules` on the PrometheusRule;
here every metric the rules and the dashboard name must exist in fetcher/metrics.py's
registry, and every dashboard query must parse as PromQL.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from .manifests import K8S, Doc, only, tool

DASHBOARD = K8S / "monitoring" / "dashboards" / "model-fetcher.json"
METRIC = re.compile(r"\b(model_fetcher_[a-z_]+)")


def exported_series() -> dict[str, set[str]]:
    """Series names (with _total, _bucket, ...) the fetcher registers, with their labels."""
    from fetcher.observe.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry, "llm-models", "m/v1/")
    metrics.retry("read_timeout")  # a labelled child exists only once a reason was counted
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def rule_exprs(built: dict[str, list[Doc]]) -> list[str]:
    rule = only(built["monitoring"], "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_alerts_cover_the_four_conditions(built: dict[str, list[Doc]]) -> None:
    rule = only(built["monitoring"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "ModelFetcherFailed",
        "ModelFetcherStalled",
        "ModelFetcherChecksumFailures",
        "ModelFetcherServedWithoutSource",
    } <= alerts
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_rules_and_dashboard_use_exported_metrics(built: dict[str, list[Doc]]) -> None:
    series = exported_series()
    used = {m for e in [*rule_exprs(built), *dashboard_exprs()] for m in METRIC.findall(e)}
    assert used, "no model_fetcher_* metric used"
    missing = used - series.keys()
    assert not missing, f"not exported by fetcher/metrics.py: {sorted(missing)}"
    # Every alert and panel filters or groups by these; they must be on every series.
    for name in used:
        assert {"bucket", "prefix"} <= series[name], name


def test_dashboard_covers_what_operators_ask(built: dict[str, list[Doc]]) -> None:
    doc = dashboard()
    titles = {p["title"] for p in doc["panels"]}
    assert {"Throughput", "Progress", "ETA", "Retries by reason", "Ranged GET latency"} <= titles
    assert "Files by outcome" in titles, "cache hits"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert doc["uid"] == "model-fetcher"
    latency = " ".join(
        t["expr"] for p in doc["panels"] if p["title"] == "Ranged GET latency" for t in p["targets"]
    )
    assert latency.count("histogram_quantile") == 3
    cm = only(built["monitoring"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["model-fetcher.json"]) == doc


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    # promtool has no "parse this expression"; a rule file of recording rules is checked by
    # the same parser. Grafana variables become the regex they stand for when set to All.
    exprs = [re.sub(r"\$\{?\w+\}?", ".*", e) for e in dashboard_exprs()]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard.rules.json"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


@pytest.mark.parametrize("bad", ["rate(model_fetcher_bytes_downloaded_total[5m]"])
def test_promtool_rejects_a_broken_query(tmp_path: Path, bad: str) -> None:
    """The check above can fail: promtool refuses an unbalanced expression."""
    path = tmp_path / "bad.rules.json"
    path.write_text(
        json.dumps({"groups": [{"name": "g", "rules": [{"record": "r", "expr": bad}]}]})
    )
    proc = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert proc.returncode != 0
