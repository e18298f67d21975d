"""Every PromQL expression the deploy files ship: the Grafana dashboard's targets and the alert
rules, with Grafana's variables replaced so Prometheus can evaluate them.

Shared by tests/unit/deploy (syntax, metric and label names) and tests/e2e/test_prometheus_loop.py
(evaluation against a live server); the e2e test loads this file by path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "eeserve.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s",
                "$model": ".*", "$policy": ".*"}
_COMPARISON = re.compile(r"\s*(>|<|>=|<=|==|!=)\s*[0-9.]+\s*$")


@dataclass(frozen=True)
class Expr:
    source: str  # "dashboard: <panel> [A]" or "alert: <name>"
    expr: str  # ready for Prometheus (variables substituted)

    @property
    def signals(self) -> list[str]:
        """An alert's clauses (split at a top-level `and`) without their `> threshold`: each
        must return data while the service has traffic. A dashboard target is its own signal."""
        return [_COMPARISON.sub("", c) for c in re.split(r"\s+and\s+", self.expr)]


def substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[Expr]:
    out = []
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            out.append(Expr(f"dashboard: {panel['title']} [{t['refId']}]", substitute(t["expr"])))
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def alert_exprs() -> list[Expr]:
    return [Expr(f"alert: {r['alert']}", " ".join(r["expr"].split())) for r in alert_rules()]


def all_exprs() -> list[Expr]:
    return dashboard_exprs() + alert_exprs()
