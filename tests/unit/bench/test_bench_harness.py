"""bench/harness.py: ports, process trees, /metrics parsing and the run record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench import harness
from bench.harness import Server, ServerError, free_port, machine, record, start


def test_free_port_is_bindable_on_loopback() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cpu_and_memory_count_the_whole_process_tree(tmp_path: Path) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n" \
           "time.sleep(30)"
    parent = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {burn!r}])"
              f"\nexec({burn!r})")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    server = Server("tree", proc, 0, tmp_path / "log")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.cpu_seconds() < 1.1:
            time.sleep(0.1)
        assert len(server.pids()) == 2
        assert server.cpu_seconds() >= 1.1  # 0.6 s each: the child's CPU is counted
        assert all(mb > 1 for mb in server.rss_mb().values())
    finally:
        for pid in server.pids()[1:]:
            subprocess.run(["kill", str(pid)], check=False)
        assert server.stop(timeout=5) != 0


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"]
    with pytest.raises(ServerError, match="exited 3: bad flag"):
        start("broken", cmd, tmp_path / "broken.log", port_flag=None, timeout=20)


def test_scrape_parses_labels_and_histograms(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = CollectorRegistry()
    Counter("eeserve_requests", "r", ["model"], registry=reg).labels("m").inc(3)
    Histogram("eeserve_exit_layer", "e", buckets=(1.5, 2.5), registry=reg).observe(2)
    text = generate_latest(reg).decode()

    class Reply:
        def __init__(self, text: str) -> None:
            self.text = text

    monkeypatch.setattr(harness.httpx, "get", lambda url, **_: Reply(text))
    got = harness.scrape("http://127.0.0.1:1")
    assert got['eeserve_requests_total{model="m"}'] == 3
    assert got['eeserve_exit_layer_bucket{le="1.5"}'] == 0
    assert got['eeserve_exit_layer_bucket{le="2.5"}'] == 1
    assert got["eeserve_exit_layer_count"] == 1


def test_record_names_the_machine_commit_versions_and_settings(tmp_path: Path) -> None:
    rec = record("demo", tmp_path / "r.json", {"req_s": 1.5}, backend="onnx",
                 precision="fp32", threads=1, workers=2)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["benchmark"] == "demo" and data["results"] == {"req_s": 1.5}
    assert data["settings"] == {"backend": "onnx", "precision": "fp32", "threads": 1,
                                "workers": 2}
    assert data["machine"]["cpus"] >= 1 and data["machine"]["commit"]
    assert data["machine"]["versions"]["torch"].startswith("2.13.0")
    assert rec.machine == machine() | {"commit": rec.machine["commit"]}
