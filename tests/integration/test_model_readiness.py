"""Per-model readiness, in-process on tiny models: a model that failed to load answers 503
with its reason while the other serves; `ready_when` decides what /readyz means."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

V2_BODY = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["fine"]}]}


@pytest.fixture(scope="module")
def tampered(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model named `tampered` whose weights no longer match the manifest."""
    bad = tmp_path_factory.mktemp("bad") / "tampered-dir"
    shutil.copytree(tiny_artifact, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["name"] = "tampered"
    (bad / "manifest.json").write_text(json.dumps(man))
    with (bad / "model.safetensors").open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    return bad


def _client(models: list[Path], ready_when: str) -> TestClient:
    app = create_app(Settings(models=[str(m) for m in models], device="cpu", backend="torch",
                              log_json=False, ready_when=ready_when))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def all_mode(tiny_artifact: Path, tampered: Path) -> Iterator[TestClient]:
    with _client([tiny_artifact, tampered], "all") as c:
        yield c


def test_the_model_that_loaded_serves_on_v1_and_v2(all_mode: TestClient) -> None:
    r = all_mode.post("/v1/classify", json={"inputs": "fine", "model": "tiny-text"})
    assert r.status_code == 200, r.text
    r = all_mode.post("/v1/classify", json={"inputs": "fine"})  # the default: the one loaded
    assert r.status_code == 200 and r.json()["model"] == "tiny-text", r.text
    assert all_mode.post("/v2/models/tiny-text/infer", json=V2_BODY).status_code == 200
    assert all_mode.get("/v2/models/tiny-text/ready").status_code == 200


def test_the_model_that_failed_answers_503_with_its_reason(all_mode: TestClient) -> None:
    for r in (all_mode.post("/v1/classify", json={"inputs": "fine", "model": "tampered"}),
              all_mode.post("/v2/models/tampered/infer", json=V2_BODY)):
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert "'tampered'" in err and "failed to load" in err and "sha256" in err.lower(), err
    assert all_mode.get("/v2/models/tampered/ready").status_code == 503
    failed = [m for m in all_mode.get("/v1/models").json()["models"] if not m["ready"]]
    assert [m["name"] for m in failed] == ["tampered"]
    assert failed[0]["kind"] == "text-classifier" and failed[0]["error"]


def test_ready_when_all_keeps_readyz_at_503_naming_the_failure(all_mode: TestClient) -> None:
    r = all_mode.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"].startswith("tampered: failed to load:")
    assert all_mode.get("/v2/health/ready").status_code == 503


def test_ready_when_any_is_ready_with_one_model(tiny_artifact: Path, tampered: Path) -> None:
    with _client([tiny_artifact, tampered], "any") as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert "tampered: failed to load" in r.json()["detail"]
        assert c.get("/v2/health/ready").status_code == 200
        assert c.post("/v1/classify", json={"inputs": "fine", "model": "tampered"}
                      ).status_code == 503
    with _client([tampered], "any") as c:  # nothing serves: not ready in either mode
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/classify", json={"inputs": "fine"})
        assert r.status_code == 503 and "tampered: failed to load" in r.json()["error"]
