"""A live server: graceful SIGTERM, a model that fails to load, metrics that promtool accepts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, sigterm_during_load, start_server

TEXTS = ["a great film", "dull and boring", "wonderful acting", "awful"] * 4


def test_sigterm_answers_every_accepted_request(tiny_artifact: Path, tmp_path: Path) -> None:
    s = start_server([tiny_artifact], tmp_path / "log", None, "--max-batch-size", "2")
    outcomes = sigterm_during_load(s, TEXTS)
    code = s.stop()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete
    assert code in (0, -signal.SIGTERM), s.log.read_text()[-2000:]
    assert "Application shutdown complete" in s.log.read_text()
    assert len(outcomes) == 8
    assert "200" in outcomes
    assert all(o in ("200", "not-accepted", "503") for o in outcomes), outcomes


def test_a_model_that_fails_to_load_answers_503_and_the_other_serves(tiny_artifact: Path,
                                                                      tmp_path: Path) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["name"] = "tampered"
    (bad / "manifest.json").write_text(json.dumps(man))  # hashes no longer match
    with (bad / "model.safetensors").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    s = start_server([tiny_artifact, bad], tmp_path / "log", wait_ready=False)
    try:
        for _ in range(300):
            models = httpx.get(f"{s.url}/v1/models", timeout=5).json()["models"]
            if len(models) == 2:
                break
            time.sleep(0.2)
        assert httpx.get(f"{s.url}/readyz").status_code == 503
        failed = [m for m in models if not m["ready"]]
        assert len(failed) == 1 and failed[0]["error"]
        ok = httpx.post(f"{s.url}/v1/classify", json={"inputs": "fine", "model": "tiny-text"})
        assert ok.status_code == 200, ok.text  # readiness is per model
        bad_r = httpx.post(f"{s.url}/v1/classify", json={"inputs": "fine", "model": "tampered"})
        assert bad_r.status_code == 503 and "failed to load" in bad_r.json()["error"]
    finally:
        s.stop()


def test_metrics_pass_promtool(server: Server) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/tools.sh installs it)")
    httpx.post(f"{server.url}/v1/classify", json={"inputs": TEXTS[:3], "policy": "none"})
    text = httpx.get(f"{server.url}/metrics").text
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_onnx_backend_serves_over_http(tiny_artifact: Path, tmp_path: Path) -> None:
    """A real uvicorn on the ONNX Runtime backend: answers, and says which backend serves."""
    s = start_server([tiny_artifact], tmp_path / "log", None, "--backend", "onnx")
    try:
        r = httpx.post(f"{s.url}/v1/classify", json={"inputs": TEXTS[:4], "policy": "beem"},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert all(1 <= x["exit_layer"] <= 3 for x in r.json()["results"])
        info = httpx.get(f"{s.url}/v1/models/tiny-text", timeout=10).json()
        assert info["details"]["backend"] == "onnx"
    finally:
        assert s.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
