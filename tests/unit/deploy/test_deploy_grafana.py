"""The provisioned Grafana dashboard: structure, datasource wiring and topic coverage.

No Grafana server can run here; the PromQL itself is checked in test_deploy_prometheus.py
(syntax, names) and tests/e2e/test_prometheus_loop.py (evaluation against live data).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from promql_sources import DASHBOARD, ROOT, dashboard  # noqa: E402

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def _panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_datasource_uid_matches_the_provisioned_one():
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for p in _panels():
        assert p["datasource"]["uid"] == source["uid"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == source["uid"], p["title"]
    for var in dashboard()["templating"]["list"]:
        assert var["datasource"]["uid"] == source["uid"]


def test_dashboard_provider_path_is_the_compose_mount():
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "eeserve.yml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert DASHBOARD.parent.name == "dashboards"


def test_panels_are_well_formed_and_do_not_overlap():
    d = dashboard()
    assert d["uid"] == "eeserve" and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_covers_the_required_figures():
    exprs = " ".join(t["expr"] for p in _panels() for t in p["targets"])
    for needle in ("rate(eeserve_requests_total", "histogram_quantile(0.5,",
                   "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                   "eeserve_exit_layer_bucket", "eeserve_layers_saved_total",
                   "eeserve_batch_size", "eeserve_queue_depth", "eeserve_budget_forced_exits_total",
                   "eeserve_caption_time_to_first_token_seconds_bucket",
                   "eeserve_caption_time_per_token_seconds_bucket", "eeserve_token_exit_layer"):
        assert needle in exprs, needle
    exit_panel = next(p for p in _panels() if "Exit-layer distribution" in p["title"])
    assert exit_panel["targets"][0]["format"] == "heatmap"  # cumulative buckets -> per layer
    assert 'policy=~"$policy"' in exit_panel["targets"][0]["expr"]


def test_template_variables_model_and_policy():
    names = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(names) == {"model", "policy"}
    for v in names.values():
        assert v["includeAll"] and v["allValue"] == ".*"
