"""`eeserve bench` as a new user runs it, against a real server on 127.0.0.1 (tiny model):
bounded by --duration and by --requests, open and closed loop; every run ends in its table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.server import ROOT, Server

pytestmark = pytest.mark.timeout(300)


def bench(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EESERVE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "service", "bench", server.url, "--dataset",
                           "tiny", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)


@pytest.mark.parametrize("load", [["-r", "20"], ["-c", "2"]], ids=["open", "closed"])
@pytest.mark.parametrize("bound", [["-d", "2"], ["-n", "12"]], ids=["duration", "requests"])
def test_bench_ends_in_its_table(server: Server, load: list[str], bound: list[str]) -> None:
    got = bench(server, "-p", "beem", *load, *bound)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "Traceback" not in got.stderr, got.stderr[-2000:]
    assert "ok/req" in got.stdout and "\nbeem " in got.stdout, got.stdout


def test_a_bad_bound_is_one_line(server: Server) -> None:
    got = bench(server, "-c", "1", "-d", "-1")
    assert got.returncode != 0
    lines = [x for x in got.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("eeserve: error:"), got.stderr
