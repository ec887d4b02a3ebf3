"""The alert rules and the dashboard, offline: ``promtool check rules``, ``promtool test rules`` (a firing and a silent
case per alert), the dashboard's structure, the local Prometheus configuration, the PromQL operand splitter."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from eqface.stack import dashboard, monitoring, prometheus
from tests.conftest import require_executable
from tests.support import promql
from tests.support.promql import (
    ALERT_TESTS_FILE,
    DASHBOARD_FILE,
    iter_panels,
    load_dashboard,
    rule_queries,
    split_operands,
)

RULES_NAME = "eqface-rules.yaml"  # what alerts.test.yaml's rule_files names


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_executable("promtool")


@pytest.fixture()
def rules_dir(tmp_path):
    monitoring.write_rules_file(tmp_path / RULES_NAME)
    shutil.copy(ALERT_TESTS_FILE, tmp_path / ALERT_TESTS_FILE.name)
    return tmp_path


def test_promtool_checks_the_rules(promtool, rules_dir):
    result = subprocess.run([promtool, "check", "rules", str(rules_dir / RULES_NAME)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    records, alerts = rule_queries()
    assert f"SUCCESS: {len(records) + len(alerts)} rules found" in result.stdout


@pytest.mark.slow
def test_promtool_alert_unit_tests_pass(promtool, rules_dir):
    result = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS_FILE.name], cwd=rules_dir, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    _, alerts = rule_queries()
    names = {q.source.removeprefix("alert ") for q in alerts}
    assert names == {
        "EQFaceTritonDown",
        "EQFaceAggregatorDown",
        "EQFaceTargetMissing",
        "EQFaceDependencyDown",
        "EQFaceFrameErrorRate",
        "EQFaceTritonInferenceErrors",
        "EQFaceRejectionRateSpike",
        "EQFaceQualityDrift",
        "EQFaceLatencySLOBreach",
    }
    firing, silent = set(), set()
    for test in yaml.safe_load(ALERT_TESTS_FILE.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert firing == names, f"no firing case: {names - firing}"
    assert silent == names, f"no silent case: {names - silent}"


RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/eqface-mlops/eqface/blob/main/docs/runbook.md#"


def _runbook_sections() -> dict[str, str]:
    """GitHub's anchor of each ``## `` heading of docs/runbook.md → the section's text."""
    sections, anchor = {}, None
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("## "):
            anchor = re.sub(r"[^a-z0-9 _-]", "", line[3:].strip().lower()).replace(" ", "-")
            sections[anchor] = ""
        elif anchor is not None:
            sections[anchor] += line + "\n"
    return sections


def test_every_alert_links_its_runbook_section():
    sections = _runbook_sections()
    alerts = [r for g in monitoring.rule_groups() for r in g["rules"] if "alert" in r]
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        assert url.startswith(RUNBOOK_URL), (alert["alert"], url)
        anchor = url.removeprefix(RUNBOOK_URL)
        assert anchor == alert["alert"].lower() and anchor in sections, (alert["alert"], url)
        for part in ("**What it means**", "**How to check**", "**How to fix**"):
            assert part in sections[anchor], (alert["alert"], part)
    assert set(sections) == {a["alert"].lower() for a in alerts}  # no section for an alert that does not exist


def test_quality_drift_reads_the_frame_quality_histogram():
    records, alerts = rule_queries()
    by_source = {q.source: q.expr for q in records + alerts}
    drift = by_source["alert EQFaceQualityDrift"]
    for operand in promql.signal_queries(drift):
        record = by_source[f"record {operand}"]
        assert record.startswith("histogram_quantile(0.5,") and "eqface_aggregator_frame_quality_bucket" in record


# ------------------------------------------------------------------------------------------------ dashboard
def test_dashboard_structure():
    dashboard = load_dashboard()
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["datasource"] == p["datasource"] for t in p["targets"])
        for t in p["targets"]:
            selectors = re.findall(r"\{([^}]*)\}", t["expr"])
            assert selectors, (p["title"], t["expr"])
            for matchers in selectors:  # every metric selector follows the dashboard's variables
                for variable in ("namespace", "job", "instance"):
                    assert f'{variable}=~"${variable}"' in matchers, (p["title"], t["expr"])
    for name in ("namespace", "job", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"], name
        assert variables[name]["query"]["query"].startswith("label_values(")


def test_the_committed_dashboard_is_what_its_python_source_generates(tmp_path):
    assert DASHBOARD_FILE.read_text() == dashboard.render(), "run python -m eqface.stack.dashboard"
    assert dashboard.main(["--check"]) == 0
    stale = tmp_path / "stale.json"
    stale.write_text(DASHBOARD_FILE.read_text().replace("eqface-overview", "edited-by-hand"))
    assert dashboard.main(["--check", "--out", str(stale)]) == 1


def test_dashboard_queries_name_metrics_the_aggregator_or_triton_export():
    """Offline half of the check (test_monitoring_live.py runs every query against the real stack): each metric a
    panel reads is one the aggregator's registry exports, one of Triton's nv_inference_* metrics, or ``up``."""
    from prometheus_client.registry import CollectorRegistry

    from eqface.service.metrics import ServiceMetrics

    registry: CollectorRegistry = ServiceMetrics().registry
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + suffix for f in registry.collect() for suffix in suffixes[f.type]}
    triton = {
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_queue_duration_us",
        "nv_inference_request_duration_us",
        "nv_inference_compute_infer_duration_us",
    }
    for query in promql.dashboard_queries():
        for metric in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query.expr):
            assert metric in exported | triton | {"up"}, (query.source, metric)


def test_dashboard_shows_what_the_issue_asks_for():
    dashboard = load_dashboard()
    by_type: dict[str, list[str]] = {}
    exprs = []
    for p in iter_panels(dashboard):
        by_type.setdefault(p["type"], []).append(p["title"])
        exprs += [t["expr"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    quality_heatmaps = [
        p
        for p in iter_panels(dashboard)
        if p["type"] == "heatmap" and "frame_quality_bucket" in p["targets"][0]["expr"]
    ]
    assert quality_heatmaps and quality_heatmaps[0]["targets"][0]["format"] == "heatmap"
    assert any(
        p["type"] == "bargauge" and "frame_quality_bucket" in p["targets"][0]["expr"] for p in iter_panels(dashboard)
    )  # the distribution as a histogram
    for needle in (
        'result="accepted"',
        "rejected_quality|rejected_similarity",
        "stage_duration_seconds_bucket",
        "rate(nv_inference_count",
        "rate(nv_inference_exec_count",
        "nv_inference_queue_duration_us",
        "eqface_aggregator_active_subjects",
        "eqface_aggregator_gallery_identities",
    ):
        assert needle in text, needle
    for q in (0.5, 0.95, 0.99):
        assert f"histogram_quantile({q}, sum by (stage, le)" in text


def test_grafana_substitution():
    expr = 'rate(x{namespace=~"$namespace"}[$__rate_interval]) + increase(y[$__range])'
    out = promql.grafana_substitute(expr, {"namespace": "a|b"}, "15s", "10m")
    assert out == 'rate(x{namespace=~"a|b"}[15s]) + increase(y[10m])'
    with pytest.raises(ValueError, match="unresolved"):
        promql.grafana_substitute('x{a="$other"}', {}, "1m", "1m")


# ------------------------------------------------------------------------------------------------ PromQL operands
@pytest.mark.parametrize(
    "expr, operands",
    [
        ('up{job="eqface-triton"} == 0', ['up{job="eqface-triton"}', "0"]),
        ("a > 0.5\nand a > 1.5 * b", ["a", "0.5", "a", "1.5", "b"]),
        (
            'sum by (x) (rate(m{r=~"a|b", s!="c"}[5m])) / sum(rate(m[1d] offset 1h))',
            ['sum by (x) (rate(m{r=~"a|b", s!="c"}[5m]))', "sum(rate(m[1d] offset 1h))"],
        ),
        ("namespace:eqface_frames_error:ratio_rate5m > 0.05", ["namespace:eqface_frames_error:ratio_rate5m", "0.05"]),
        ("a / on (le) group_left b", ["a", "b"]),
    ],
)
def test_split_operands(expr, operands):
    assert split_operands(expr) == operands


def test_alert_signals_unwrap_absent():
    assert promql.signal_queries('absent(up{job="a"}) or absent(up{job="b"})') == ['up{job="a"}', 'up{job="b"}']


# ------------------------------------------------------------------------------------------------ local Prometheus
def test_local_prometheus_config_is_valid(tmp_path):
    promtool = require_executable("promtool")
    rules = monitoring.write_rules_file(tmp_path / RULES_NAME)
    config = prometheus.render_config("127.0.0.1:8002", "127.0.0.1:9464", rules, scrape_interval_s=1)
    path = prometheus.write_config(tmp_path / "prometheus.yml", config)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert jobs == {monitoring.TRITON_JOB, monitoring.AGGREGATOR_JOB}
