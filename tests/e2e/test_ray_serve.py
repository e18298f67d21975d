"""eeserve under Ray Serve (deploy/ray): the unchanged app answers through the Serve proxy on
127.0.0.1, and its metrics reach Ray's Prometheus export with eeserve's names and labels.

Skipped without `ray[serve]` (the optional `ray` extra). Starts an in-process local cluster
(2 logical CPUs, no dashboard) and shuts it down afterwards.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.schemas import ClassifyResponse

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def loopback_ray() -> Iterator[None]:
    """Keep every Ray connection on 127.0.0.1. Ray replaces a loopback node address by the
    machine's interface address unless its 'local only' switch is off; that switch is read when
    `ray._private.ray_constants` is first imported, so it is set on the module as well."""
    from ray._private import ray_constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        yield


@pytest.fixture(scope="module")
def ray_serve(tiny_artifact: Path, loopback_ray: None) -> Iterator[tuple[str, str]]:
    sys.path.insert(0, str(ROOT))
    from deploy.ray.app import EeserveDeployment

    metrics_port, http_port = free_port(), free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "EESERVE_MODELS": str(tiny_artifact), "EESERVE_DEVICE": "cpu",
           "EESERVE_TORCH_THREADS": "1", "EESERVE_LOG_JSON": "false", "OMP_NUM_THREADS": "1",
           "RAY_EXPORT_COUNTER_AS_GAUGE": "0", "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", _metrics_export_port=metrics_port,
             runtime_env={"env_vars": env},
             _system_config={"metrics_report_interval_ms": 1000})
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        app = EeserveDeployment.options(num_replicas=2,
                                        ray_actor_options={"num_cpus": 0.5}).bind()
        serve.run(app, name="eeserve", route_prefix="/")
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "eeserve under Ray never became ready"
            time.sleep(0.5)
        yield url, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()


def _sum(text: str, series: str) -> float:
    pattern = re.compile(rf"^{re.escape(series)}(?:\{{[^}}]*\}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_classify_through_the_serve_proxy(ray_serve):
    url, _ = ray_serve
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        r = c.post("/v1/classify", json={"inputs": ["great fun", "dull plot"], "policy": "none"})
        assert r.status_code == 200, r.text
        body = ClassifyResponse.model_validate(r.json())
        assert [x.exit_layer for x in body.results] == [x.num_layers for x in body.results]
        bad = c.post("/v1/classify", json={"inputs": []})
        assert bad.status_code in (400, 422) and bad.json()["code"] == "bad_request"


def test_two_replicas_answer_and_their_metrics_add_up(ray_serve):
    url, metrics_url = ray_serve
    sent = 24

    def call(_: int) -> bool:
        with httpx.Client(base_url=url, trust_env=False, timeout=60) as c:
            return c.post("/v1/classify", json={"inputs": "great", "policy": "none"}).is_success

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(sent)))
    ok_series = r'ray_eeserve_requests_total{{[^}}]*status="ok"[^}}]*}}'
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(metrics_url, timeout=5, trust_env=False).text
        if _sum(text, "ray_eeserve_exit_layer_count") >= sent + 2:
            break
        time.sleep(1)
    # every classified text of this module (2 in the proxy test + `sent` here) and every ok
    # request (1 + `sent`) counted exactly once, summed over the two replicas' own series
    assert _sum(text, "ray_eeserve_exit_layer_count") == sent + 2, "exit layers do not add up"
    ok_lines = [x for x in text.splitlines() if re.match(ok_series.format(), x)]
    assert sum(float(x.rsplit(" ", 1)[1]) for x in ok_lines) == sent + 1
    replicas = {re.search(r'replica="([^"]+)"', x).group(1) for x in ok_lines}  # type: ignore[union-attr]
    assert len(replicas) == 2, f"requests reached {replicas}"
    line = ok_lines[0]
    for label in ("model=", "policy=", "endpoint=", "status=", "deployment=", "replica="):
        assert label in line, line
    assert re.search(r'ray_eeserve_exit_layer_bucket\{[^}]*le="3\.5"', text)
