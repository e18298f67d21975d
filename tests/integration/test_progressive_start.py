"""A server that starts with nothing built: the tiny-text model is built in a real subprocess
while /readyz answers 503 with the build's progress, then serves; a failing build is reported
without holding back the model that was built."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.building import BuildJob
from service.settings import Settings


def _wait_ready_model(c: TestClient, name: str, timeout: float = 240) -> list[dict[str, object]]:
    """Poll /readyz until `name` is ready; returns every 503 body seen on the way."""
    seen: list[dict[str, object]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = c.get("/readyz")
        body = r.json()
        if any(m["name"] == name and m["ready"] for m in body["models"]):
            return seen
        assert r.status_code == 503, body
        seen.append(body)
        time.sleep(0.2)
    raise AssertionError(f"{name} not served within {timeout}s; last: {seen[-1:]}")


def test_models_build_in_the_background_and_serve_when_built(tmp_path: Path) -> None:
    jobs = [BuildJob("tiny-text", "tiny-text", "text-classifier", tmp_path / "tiny-text",
                     estimate_s=30.0, after_s={"training": 2.0}),
            BuildJob("broken", "no-such-recipe", "captioner", tmp_path / "broken",
                     estimate_s=5.0)]
    app = create_app(Settings(models=[], device="cpu", log_json=False), builds=jobs)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/readyz")  # the server answers at once, before anything is built
        assert r.status_code == 503
        first = {m["name"]: m for m in r.json()["models"]}
        assert set(first) == {"tiny-text", "broken"}
        assert first["tiny-text"]["progress"] and first["tiny-text"]["eta_s"] is not None
        assert first["broken"]["progress"].startswith("queued")  # waits for the first build
        assert first["broken"]["eta_s"] >= first["tiny-text"]["eta_s"]
        listed = c.get("/v1/models").json()["models"]
        assert {m["name"]: m["details"]["build"]["state"] for m in listed} == {
            "tiny-text": "building", "broken": "queued"}
        early = c.post("/v1/classify", json={"inputs": "a great film"})
        assert early.status_code == 503 and "tiny-text" in early.json()["error"]

        seen = _wait_ready_model(c, "tiny-text")
        lines = [m["progress"] for b in seen for m in b["models"]  # type: ignore[attr-defined]
                 if m["name"] == "tiny-text" and m["progress"]]
        assert lines and all(isinstance(x, str) for x in lines)

        ok = c.post("/v1/classify", json={"inputs": ["a great film", "dull"], "policy": "none",
                                          "return_trace": True})
        assert ok.status_code == 200, ok.text
        assert [x["exit_layer"] for x in ok.json()["results"]] == [3, 3]
        assert (tmp_path / "tiny-text" / "manifest.json").exists()
        assert not (tmp_path / ".tiny-text.building").exists()

        end = time.monotonic() + 120
        while time.monotonic() < end:
            broken = next(m for m in c.get("/readyz").json()["models"] if m["name"] == "broken")
            if broken["error"]:
                break
            time.sleep(0.3)
        assert "no-such-recipe" in broken["error"], broken
        r = c.get("/readyz")
        assert r.status_code == 503 and "broken" in r.json()["detail"]
        assert c.post("/v1/classify", json={"inputs": "fine"}).status_code == 200
        caption = c.post("/v1/caption", json={"images": ["aGk="]})
        assert caption.status_code == 503 and "broken" in caption.json()["error"]
