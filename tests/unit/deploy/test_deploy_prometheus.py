"""Prometheus config, alert rules and the dashboard's PromQL: promtool checks and name checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.metrics import PrometheusStatLogger

sys.path.insert(0, str(Path(__file__).parent))
from promql_sources import ALERTS, PROMETHEUS, alert_rules, all_exprs  # noqa: E402

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(.ci/tools.sh installs Debian's prometheus)")
_NAME = re.compile(r"\b(eeserve_[a-z_]+)")
_SELECTOR = re.compile(r"\b(eeserve_[a-z_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SUFFIXES = ("_bucket", "_sum", "_count")
ALWAYS = {"job", "instance"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def metric_labels() -> dict[str, set[str]]:
    """Series name -> label names, from a real registry of service/metrics.py."""
    sink = PrometheusStatLogger(process_metrics=False)
    out: dict[str, set[str]] = {}
    for family in sink.registry.collect():
        for sample_name in _family_series(family.name, family.type):
            out[sample_name] = set(_declared_labels(sink, family.name))
    return out


def _family_series(name: str, kind: str) -> list[str]:
    if kind == "histogram":
        return [name + s for s in _SUFFIXES]
    if kind == "counter":
        return [name + "_total"]
    return [name]


def _declared_labels(sink: PrometheusStatLogger, family: str) -> tuple[str, ...]:
    for metric in vars(sink).values():
        if getattr(metric, "_name", None) == family:
            return tuple(metric._labelnames)
    raise AssertionError(f"no metric object for {family}")


@needs_promtool
def test_prometheus_config_and_rules_check():
    r = promtool("check", "config", str(PROMETHEUS))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0 and "7 rules found" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_alert_rule_unit_tests():
    r = promtool("test", "rules", "alerts_test.yml", cwd=ALERTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_can_fail(tmp_path):
    """A broken threshold must make `promtool test rules` fail (the tests are not vacuous)."""
    broken = ALERTS.read_text().replace("up{job=\"eeserve\"} < 1", "up{job=\"eeserve\"} < 2")
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text((ALERTS.parent / "alerts_test.yml").read_text())
    r = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "EeserveDown" in r.stdout + r.stderr


@needs_promtool
def test_every_dashboard_and_alert_expression_parses(tmp_path):
    """Each expression as a recording rule: `promtool check rules` parses all the PromQL."""
    exprs = all_exprs()
    rules = {"groups": [{"name": "syntax", "rules": [
        {"record": f"check:expr_{i}", "expr": e.expr} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(exprs)} rules found" in r.stdout


def test_expressions_use_only_service_metrics_and_their_labels():
    labels = metric_labels()
    for e in all_exprs():
        names = set(_NAME.findall(e.expr))
        if not names:
            assert e.expr.startswith("up{"), f"{e.source} uses no eeserve metric"
            continue
        unknown = names - set(labels)
        assert not unknown, f"{e.source}: unknown series {unknown}"
        for name, matchers in _SELECTOR.findall(e.expr):
            used = {m.split("=")[0].strip(" !~") for m in matchers.split(",") if m.strip()}
            assert used <= labels[name] | ALWAYS, f"{e.source}: {name} has no label {used}"
        allowed = set().union(*(labels[n] for n in names)) | ALWAYS | {"le"}
        for group in _BY.findall(e.expr):
            by = {x.strip() for x in group.split(",") if x.strip()}
            assert by <= allowed, f"{e.source}: grouping by unknown labels {by - allowed}"


def test_alerts_cover_latency_queue_and_errors():
    rules = {r["alert"]: r for r in alert_rules()}
    assert {"EeserveHighP99Latency", "EeserveQueueRising", "EeserveHighErrorRate"} <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule.get("for"), f"{name} fires on a single evaluation"


def test_scrape_config_targets_the_service():
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["eeserve"]["metrics_path"] == "/metrics"
    assert jobs["eeserve"]["static_configs"][0]["targets"] == ["eeserve:8000"]
    assert cfg["rule_files"] == ["alerts.yml"]
