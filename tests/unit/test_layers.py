"""The layout's import rules: serving code apart from building, fitting and tooling.

The static graph is checked by import-linter (contracts in pyproject.toml, also `make lint`);
what a running server really loads is checked by starting it in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.api import read_configuration

ROOT = Path(__file__).parents[2]
CONTRACTS = {"layers", "server", "http-torch-free", "acyclic"}
OFFLINE = ("models.build", "policies.fit", "tools")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1"}


def _offline(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in OFFLINE)]


def test_every_contract_is_configured() -> None:
    ids = {c.get("id") for c in read_configuration(str(ROOT / "pyproject.toml"))
           ["contracts_options"]}
    assert ids == CONTRACTS


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in res.stdout


def _loaded(code: str) -> list[str]:
    """Our modules in sys.modules after running `code` in a fresh interpreter."""
    probe = code + (
        "\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('service', 'models', 'policies', 'tools', 'torch'))))\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return list(json.loads(res.stdout.strip().splitlines()[-1]))


def test_the_http_layer_alone_loads_no_torch_and_no_offline_code() -> None:
    mods = _loaded("import service.app, service.progressive, service.building")
    assert "service.app" in mods
    assert "torch" not in mods and not any(m.startswith("service.engine") for m in mods)
    assert _offline(mods) == []


@pytest.mark.slow
def test_a_serving_app_loads_no_offline_code(tiny_artifact: Path) -> None:
    """The app with the real engine and a model, after one answered request."""
    mods = _loaded(
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        f"app = create_app(Settings(models=[{str(tiny_artifact)!r}], device='cpu',"
        " log_json=False))\n"
        "with TestClient(app) as c:\n"
        "    r = c.post('/v1/classify', json={'inputs': ['a fine film']})\n"
        "    assert r.status_code == 200, r.text\n")
    assert "service.engine" in mods and "models.loading" in mods and "torch" in mods
    assert _offline(mods) == []
