"""deploy/ray (Serve config, metrics adapter, Prometheus job) and deploy/kubernetes manifests,
checked without Ray or a cluster (the live Ray test is tests/e2e/test_ray_serve.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RAY_DIR = ROOT / "deploy" / "ray"
K8S = ROOT / "deploy" / "kubernetes" / "eeserve.yaml"


def _load_ray_metrics():
    sys.path.insert(0, str(ROOT))
    from deploy.ray import metrics  # imports no ray at module level

    return metrics


# ---- Ray ------------------------------------------------------------------------------------
def test_serve_config_points_at_the_app_and_keeps_one_batcher():
    cfg = yaml.safe_load((RAY_DIR / "serve_config.yaml").read_text())
    assert cfg["http_options"]["host"] == "127.0.0.1"
    (app,) = cfg["applications"]
    module, attr = app["import_path"].split(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert re.search(rf"(?m)^{attr} = ", source)
    (dep,) = app["deployments"]
    assert f'name="{dep["name"]}"' in source
    env = app["runtime_env"]["env_vars"]
    assert dep["max_ongoing_requests"] >= int(env["EESERVE_MAX_BATCH_SIZE"])
    # the app does not refuse (429) what Ray hands the replica
    assert int(env["EESERVE_MAX_INFLIGHT_REQUESTS"]) >= dep["max_ongoing_requests"]
    assert env["RAY_EXPORT_COUNTER_AS_GAUGE"] == "0"
    assert env["EESERVE_TORCH_THREADS"] == str(dep["ray_actor_options"]["num_cpus"])
    assert Path(env["EESERVE_MODELS"]).is_absolute()
    assert not re.search(r"(?m)^\s*@serve\.batch", source), "one batcher: eeserve's engine"


def test_ray_prometheus_job_strips_the_prefix():
    cfg = yaml.safe_load((RAY_DIR / "prometheus-ray.yml").read_text())
    (job,) = cfg["scrape_configs"]
    (relabel,) = job["metric_relabel_configs"]
    pattern = re.compile(f"^(?:{relabel['regex']})$")  # Prometheus anchors regexes
    match = pattern.match("ray_eeserve_exit_layer_bucket")
    assert match and relabel["replacement"].replace("$1", match.group(1)) == \
        "eeserve_exit_layer_bucket"
    assert not pattern.match("ray_serve_num_http_requests_total")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "config", str(RAY_DIR / "prometheus-ray.yml")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


class FakeRayMetric:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("observe", value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("set", value, tags))


def test_ray_metric_adapter_speaks_prometheus_client():
    metrics = _load_ray_metrics()
    fake = FakeRayMetric()
    m = metrics.RayMetric(fake, ("model", "policy"))
    m.labels(model="m", policy="beem").inc()
    m.labels(policy="none", model="m").observe(3)
    m.set(2)
    assert fake.calls == [("inc", 1.0, {"model": "m", "policy": "beem"}),
                          ("observe", 3, {"model": "m", "policy": "none"}), ("set", 2, {})]
    with pytest.raises(ValueError):
        m.labels(model="m")


def test_ray_stat_logger_builds_every_metric_through_ray(monkeypatch):
    metrics = _load_ray_metrics()
    made: list[tuple[str, str, tuple[str, ...] | None]] = []

    class Factory:
        def __init__(self, kind: str):
            self.kind = kind

        def __call__(self, name: str, doc: str, boundaries=None, tag_keys=None):
            made.append((self.kind, name, tag_keys))
            if self.kind == "Histogram":
                assert boundaries and all(b > 0 for b in boundaries)
            return FakeRayMetric()

    fake_module = type(sys)("ray.serve.metrics")
    for kind in ("Counter", "Histogram", "Gauge"):
        setattr(fake_module, kind, Factory(kind))
    fake_serve = type(sys)("ray.serve")
    fake_serve.metrics = fake_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", type(sys)("ray"))
    monkeypatch.setitem(sys.modules, "ray.serve", fake_serve)
    monkeypatch.setitem(sys.modules, "ray.serve.metrics", fake_module)
    from service.metrics import METRIC_NAMES
    from service.stats import RequestStats, SampleStats

    sink = metrics.RayStatLogger(max_layers=6)
    names = {name + ("_total" if kind == "Counter" else "") for kind, name, _ in made}
    assert names == set(METRIC_NAMES)
    sink.record_sample(SampleStats("m", "beem", exit_layer=2, num_layers=6, budget_forced=True))
    sink.record_request(RequestStats("m", "beem", "classify", "ok", 0.001, 0.01))
    sink.set_queue_depth(3)
    assert sink.layers_saved._metric.calls == [("inc", 4, {"model": "m", "policy": "beem"})]
    assert sink.queue_depth._metric.calls == [("set", 3, {})]


# ---- Kubernetes -------------------------------------------------------------------------------
def _k8s() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(K8S.read_text())}


def test_kubernetes_probes_match_the_app_routes():
    from service.app import create_app
    from service.settings import Settings

    paths = set(create_app(Settings()).openapi()["paths"])
    pod = _k8s()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths, probe
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["args"][0] == "serve"
    user = re.findall(r"(?m)^USER (\d+)", (ROOT / "Dockerfile").read_text())[-1]
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert container["resources"]["limits"]["cpu"] == next(
        e["value"] for e in container["env"] if e["name"] == "EESERVE_TORCH_THREADS")


def test_kubernetes_service_and_autoscaler_target_the_deployment():
    docs = _k8s()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"] == labels
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        docs["Deployment"]["metadata"]["name"]
