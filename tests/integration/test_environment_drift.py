"""An artifact built under other library versions still serves, and says so: a warning at load
naming the package and both versions, and `details.environment_drift` in /v1/models."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.artifact import read_manifest, write_manifest
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def drifted(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drift") / "drifted"
    shutil.copytree(tiny_artifact, out)
    manifest = read_manifest(out)
    manifest["environment"]["build"]["tokenizers"] = "0.0.1"
    write_manifest(out, manifest, rehash=False)
    return out


def test_a_drifted_artifact_serves_warns_and_reports_the_drift(
        drifted: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(models=[str(drifted)], device="cpu", backend="torch",
                              log_json=False))
    with caplog.at_level(logging.WARNING, logger="eeserve.engine"), TestClient(app) as client:
        assert client.post("/v1/classify", json={"inputs": "fine"}).status_code == 200
        details = client.get("/v1/models/tiny-text").json()["details"]
    warned = [r for r in caplog.records if "environment differs" in r.getMessage()]
    assert len(warned) == 1 and "tokenizers" in warned[0].__dict__["drift"]
    assert details["environment_drift"] == [
        f"tokenizers {details['environment']['calibrate']['tokenizers']} serves, 0.0.1 ran build"]
    assert json.dumps(details["environment"])  # the recorded versions are shown as they are
