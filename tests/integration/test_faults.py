"""Faults during a run, in-process on tiny models with real build subprocesses: the artifact
directory removed or replaced under a running server, the disk full while a background build
writes, the build subprocess killed. Each gives a clear state in /readyz and a log line, what
already serves keeps serving, and the next start recovers."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.building import BuildJob, lock_file, staging_dir
from service.settings import Settings
from tools.build_worker import FAULT_ENV


def _until(what: Callable[[], Any], timeout: float = 180.0, every: float = 0.1) -> Any:
    """Poll `what` until it returns something truthy; that value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s")


def _model(c: TestClient, name: str) -> dict[str, Any]:
    return next(m for m in c.get("/readyz").json()["models"] if m["name"] == name)


def _tiny_job(out: Path) -> BuildJob:
    return BuildJob("tiny-text", "tiny-text", "text-classifier", out, estimate_s=30.0,
                    after_s={"training": 2.0})


def _building_app(out: Path) -> TestClient:
    app = create_app(Settings(models=[], device="cpu", log_json=False), builds=[_tiny_job(out)])
    return TestClient(app, raise_server_exceptions=False)


def _serves_after_a_fresh_start(out: Path) -> None:
    """The next start builds `out` again and serves it."""
    with _building_app(out) as c:
        _until(lambda: _model(c, "tiny-text")["ready"], timeout=240, every=0.3)
        r = c.post("/v1/classify", json={"inputs": "a great film"})
        assert r.status_code == 200, r.text
    assert (out / "manifest.json").exists() and not staging_dir(out).exists()


def test_a_full_disk_during_a_build_is_named_and_the_next_start_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "tiny-text"
    monkeypatch.setenv(FAULT_ENV, "disk-full")  # the manifest write goes to /dev/full (ENOSPC)
    with caplog.at_level(logging.ERROR, logger="eeserve"), _building_app(out) as c:
        m = _until(lambda: (x := _model(c, "tiny-text"))["error"] and x, timeout=240, every=0.3)
        assert "no space left on device" in m["error"] and "free some" in m["error"], m
        r = c.get("/readyz")
        assert r.status_code == 503 and "no space left on device" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # the server itself is fine
    assert not out.exists() and not staging_dir(out).exists()  # no half artifact left
    failed = [r for r in caplog.records if r.getMessage() == "build failed"]
    assert failed and "no space left on device" in failed[0].__dict__["error"]
    monkeypatch.delenv(FAULT_ENV)
    _serves_after_a_fresh_start(out)


def test_a_killed_build_names_the_signal_and_stage_and_the_next_start_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "tiny-text"
    with caplog.at_level(logging.ERROR, logger="eeserve"), _building_app(out) as c:
        builder = c.app.state.engine.builder  # type: ignore[attr-defined]
        _until(lambda: builder._proc is not None and staging_dir(out).exists())
        os.kill(builder._proc.pid, signal.SIGKILL)  # no clean-up runs in the worker
        m = _until(lambda: (x := _model(c, "tiny-text"))["error"] and x, timeout=60)
        assert "killed by signal 9 (SIGKILL)" in m["error"], m
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
    assert not staging_dir(out).exists()  # the server removed what the worker could not
    assert not out.exists()
    failed = [r for r in caplog.records if r.getMessage() == "build failed"]
    assert failed and failed[0].__dict__["exit_status"] == -signal.SIGKILL
    assert failed[0].__dict__["staging_removed"] is True
    _serves_after_a_fresh_start(out)


def test_a_staging_directory_of_a_build_under_way_elsewhere_is_kept(tmp_path: Path) -> None:
    import fcntl

    from service.building import remove_staging

    out = tmp_path / "m"
    staging_dir(out).mkdir(parents=True)
    with open(lock_file(out), "w") as held:  # another process's build of `out`
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert remove_staging(out) is False and staging_dir(out).exists()
    assert remove_staging(out) is True and not staging_dir(out).exists()


def _serving_app(path: Path, **kw: Any) -> TestClient:
    app = create_app(Settings(models=[str(path)], device="cpu", backend="torch", log_json=False,
                              artifact_check_s=0.05, **kw))
    return TestClient(app, raise_server_exceptions=False)


def test_an_artifact_removed_or_replaced_under_a_running_server(
        tiny_artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    served = tmp_path / "served"
    shutil.copytree(tiny_artifact, served)
    body = {"inputs": ["a great film", "dull"], "policy": "none"}
    with caplog.at_level(logging.INFO, logger="eeserve"), _serving_app(served) as c:
        before = c.post("/v1/classify", json=body).json()["results"]
        assert _model(c, "tiny-text")["artifact"] is None

        shutil.move(served, tmp_path / "moved-away")  # removed
        m = _until(lambda: (x := _model(c, "tiny-text"))["artifact"] and x, timeout=10)
        assert m["artifact"].startswith("removed: ") and m["ready"], m
        r = c.get("/readyz")
        assert r.status_code == 200  # it still serves, from memory
        assert c.post("/v1/classify", json=body).json()["results"] == before
        listed = c.get("/v1/models/tiny-text").json()["details"]["artifact"]
        assert listed["state"] == "removed" and listed["since"]

        shutil.copytree(tiny_artifact, served)  # replaced by another copy (new inodes)
        m = _until(lambda: (x := _model(c, "tiny-text"))["artifact"].startswith("changed")
                   and x, timeout=10)
        assert "restart serves the new one" in m["artifact"]
        assert c.post("/v1/classify", json=body).json()["results"] == before
    warned = [r.__dict__.get("state") for r in caplog.records if r.name == "eeserve.artifacts"
              and r.levelno == logging.WARNING]
    assert warned == ["removed", "changed"]  # one line per change, not one per check

    with _serving_app(served) as c:  # the next start loads what is there now
        assert c.get("/readyz").status_code == 200
        assert _model(c, "tiny-text")["artifact"] is None
        assert c.post("/v1/classify", json=body).json()["results"] == before
