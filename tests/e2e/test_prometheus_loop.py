"""A real eeserve and a real Prometheus on loopback: every dashboard and alert expression is
evaluated over live scraped data.

eeserve runs as `eeserve serve` in a subprocess on a free 127.0.0.1 port; Prometheus
(Debian's /usr/bin/prometheus) uses deploy/prometheus/prometheus.yml with the eeserve target
rewritten to it and a 1 s scrape interval. Skipped when the prometheus binary is absent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tools.loadtest.driver import Bound
from tools.loadtest.records import LoadSpec
from tools.loadtest.runner import BenchPlan, run_bench_sync
from tools.loadtest.workloads import ClassifyWorkload, RequestOptions, TextPool

PROMETHEUS_BIN = shutil.which("prometheus")
pytestmark = [
    pytest.mark.prometheus, pytest.mark.slow, pytest.mark.timeout(400),
    pytest.mark.skipif(PROMETHEUS_BIN is None, reason="prometheus binary not installed "
                       "(.ci/tools.sh installs Debian's prometheus)"),
]
ROOT = Path(__file__).resolve().parents[2]
# caption series need a captioning model; the tiny text artifact has none; retuning moves
# thresholds only when a promise is proven broken, which this traffic need not do
NO_TRAFFIC = ("eeserve_caption_", "eeserve_token_exit_layer", "eeserve_token_shadow_",
              "eeserve_retune_")


def _sources() -> Any:
    name = "eeserve_promql_sources"
    if name in sys.modules:
        return sys.modules[name]
    path = ROOT / "tests" / "unit" / "deploy" / "promql_sources.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def eeserve_url(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("eeserve") / "serve.log", "w")  # noqa: SIM115
    env = {**os.environ, "EESERVE_TORCH_THREADS": "1", "EESERVE_LOG_JSON": "false",
           "EESERVE_SHADOW_RATE": "1.0", "EESERVE_SHADOW_MIN_SUPPORT": "5",
           "EESERVE_ADAPT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", str(tiny_artifact),
                             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2, trust_env=False)
                 .status_code == 200, 120, "eeserve /readyz", proc)
        yield url
    finally:
        stop(proc)
        log.close()


def prometheus_config(eeserve_port: int, prom_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
    targets = {"eeserve": f"127.0.0.1:{eeserve_port}", "prometheus": f"127.0.0.1:{prom_port}"}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return cfg


@pytest.fixture(scope="module")
def prometheus_url(eeserve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS_BIN
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    cfg = prometheus_config(int(eeserve_url.rsplit(":", 1)[1]), port)
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = open(work / "prometheus.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([PROMETHEUS_BIN, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _targets_up(url), 60, "prometheus scraping eeserve", proc)
        yield url
    finally:
        stop(proc)
        log.close()


def _targets_up(url: str) -> bool:
    r = httpx.get(f"{url}/api/v1/targets", timeout=2, trust_env=False)
    active = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
    return any(t["labels"]["job"] == "eeserve" and t["health"] == "up" for t in active)


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10, trust_env=False)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def traffic(eeserve_url: str, prometheus_url: str) -> None:
    """A few seconds of classify traffic (full depth, early exit, budget-forced exits and
    client errors) spread over several scrapes."""
    texts = ["the film was great and moving", "dull boring plot", "charming but tedious",
             "a brilliant cast with a stale script"]
    pool = TextPool(texts, [1, 0, 0, 1], ["negative", "positive"], "e2e")
    plan = BenchPlan(url=eeserve_url, policies=["none", "maxprob"],
                     loads=[LoadSpec("closed", 2)], bound=Bound(requests=400, duration_s=2.5))
    report = run_bench_sync(plan, lambda p: ClassifyWorkload(pool, 2, RequestOptions(policy=p)))
    assert all(r.ok > 10 for r in report.runs), [(r.policy, r.ok, r.errors) for r in report.runs]
    budget = BenchPlan(url=eeserve_url, policies=["none"], loads=[LoadSpec("closed", 1)],
                       bound=Bound(requests=60, duration_s=1.5))
    opts = RequestOptions(policy="none", latency_budget_ms=0.001)
    (forced,) = run_bench_sync(budget, lambda p: ClassifyWorkload(pool, 1, opts)).runs
    assert forced.budget_forced > 0, "a 1 µs budget must force exits"
    with httpx.Client(base_url=eeserve_url, trust_env=False, timeout=10) as c:
        for _ in range(5):
            assert c.post("/v1/classify", json={"inputs": []}).status_code in (400, 422)
        for t in texts * 5:  # one at a time: the engine idles between them, shadow work runs
            body = {"inputs": t, "policy": "maxprob", "params": {"threshold": 0.5},
                    "shadow": True}
            assert c.post("/v1/classify", json=body).status_code == 200
    wait_for(lambda: query(prometheus_url, "eeserve_budget_forced_exits_total"), 30,
             "budget-forced exits scraped")
    wait_for(lambda: query(prometheus_url, 'eeserve_shadow_support{exit="all"}'), 30,
             "live agreement scraped")
    time.sleep(4)  # a few more scrapes, so rate() windows hold several samples


def test_rules_load_and_evaluate_without_errors(prometheus_url, traffic):
    r = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10, trust_env=False).json()
    rules = [rule for g in r["data"]["groups"] for rule in g["rules"]]
    names = {rule["name"] for rule in rules}
    assert {x["alert"] for x in _sources().alert_rules()} == names
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_every_expression_returns_data(prometheus_url, traffic):
    empty = []
    exprs = _sources().all_exprs()
    assert len(exprs) > 20
    for e in exprs:
        query(prometheus_url, e.expr)  # the full expression evaluates
        for signal_expr in e.signals:
            if not query(prometheus_url, signal_expr) and not any(
                    n in signal_expr for n in NO_TRAFFIC):
                empty.append(f"{e.source}: {signal_expr}")
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_values_match_the_traffic(prometheus_url, traffic):
    ok = query(prometheus_url, 'sum(eeserve_requests_total{status="ok"})')
    assert float(ok[0]["value"][1]) > 40
    bad = query(prometheus_url, 'sum(eeserve_requests_total{status="bad_request"})')
    assert float(bad[0]["value"][1]) == 5
    full = query(prometheus_url, 'sum(eeserve_exit_layer_bucket{policy="none", le="2.5"})')
    assert float(full[0]["value"][1]) <= float(query(
        prometheus_url, 'sum(eeserve_budget_forced_exits_total{policy="none"})')[0]["value"][1])
    checks = query(prometheus_url, 'sum(eeserve_shadow_checks_total{policy=~"maxprob.*"})')
    assert float(checks[0]["value"][1]) >= 20  # every early answer of the shadow requests
    up = query(prometheus_url, 'up{job="eeserve"}')
    assert up and up[0]["value"][1] == "1"


def test_models_show_live_agreement_beside_the_operating_point(eeserve_url, traffic):
    body = httpx.get(f"{eeserve_url}/v1/models", timeout=10, trust_env=False).json()
    details = body["models"][0]["details"]
    assert "operating_points" in details
    live = details["live_agreement"]
    assert live["shadow_rate"] == 1.0 and live["adapt"] is True
    custom = [v for k, v in live["policies"].items() if k.startswith("maxprob~")]
    assert custom and custom[0]["all"]["checks"] >= 20
    assert 0.0 <= custom[0]["all"]["lower"] <= custom[0]["all"]["upper"] <= 1.0
