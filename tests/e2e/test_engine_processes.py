"""`eeserve serve --workers 2` under a real uvicorn: one port, engine processes under it,
SIGTERM drains them all, and none outlives the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.server import sigterm_during_load, start_server

TEXTS = ["a great film", "dull and boring", "wonderful acting", "awful"] * 4


def engine_pids(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"service.engine.process" in cmd:
            out.append(pid)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_drains_every_engine_process(tiny_artifact: Path, tmp_path: Path) -> None:
    s = start_server([tiny_artifact], tmp_path / "log", None, "--workers", "2",
                     "--max-batch-size", "2")
    engines = engine_pids(s.pids())
    assert len(engines) == 2, s.log_tail()
    outcomes = sigterm_during_load(s, TEXTS)
    code = s.stop()
    assert code in (0, -signal.SIGTERM), s.log_tail()
    assert len(outcomes) == 8 and "200" in outcomes
    assert all(o in ("200", "not-accepted", "503") for o in outcomes), outcomes
    end = time.monotonic() + 10
    while any(alive(p) for p in engines) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(alive(p) for p in engines), "an engine process outlived the server"


def test_the_front_loads_no_torch(tiny_artifact: Path, tmp_path: Path) -> None:
    """The front only relays plain records: after answers, shadow checks (relayed between
    engine processes) and scrapes, torch is mapped in the engine processes, not in the front."""
    s = start_server([tiny_artifact], tmp_path / "log", None, "--workers", "2")
    try:
        body = {"inputs": ["fine", "dull"], "policy": "maxprob", "params": {"threshold": 0.0},
                "shadow": True}
        for _ in range(10):
            assert httpx.post(f"{s.url}/v1/classify", json=body, timeout=30).status_code == 200
        assert httpx.get(f"{s.url}/v1/models", timeout=30).status_code == 200
        assert "eeserve_engine_process_up" in httpx.get(f"{s.url}/metrics", timeout=30).text
        time.sleep(1.0)  # state and stats frames after the answers

        def maps(pid: int) -> str:
            return Path(f"/proc/{pid}/maps").read_text()

        assert "libtorch" not in maps(s.proc.pid)
        assert all("libtorch" in maps(p) for p in engine_pids(s.pids()))
    finally:
        s.stop()


def test_engine_processes_exit_when_the_front_is_killed(tiny_artifact: Path,
                                                        tmp_path: Path) -> None:
    s = start_server([tiny_artifact], tmp_path / "log", None, "--workers", "2")
    engines = engine_pids(s.pids())
    assert len(engines) == 2
    r = httpx.post(f"{s.url}/v1/classify", json={"inputs": ["fine"]}, timeout=30)
    assert r.status_code == 200
    s.stop(signal.SIGKILL)
    end = time.monotonic() + 15
    while any(alive(p) for p in engines) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(alive(p) for p in engines), "orphaned engine processes"
