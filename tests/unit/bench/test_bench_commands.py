"""Every benchmark is a command: `python -m bench.<name> --help` prints its usage and exits 0.

Each module under bench/ that defines `main(argv)` is called in-process with `--help` (an
import of every benchmark, so a broken import fails here, not on the day it is needed); one is
run as a real `python -m` to check the entry point itself.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import bench
from bench.harness import ROOT


def _commands() -> list[str]:
    out = []
    for info in pkgutil.walk_packages(bench.__path__, "bench."):
        if info.ispkg or info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        if info.name == "bench.harness":
            continue
        out.append(info.name)
    return sorted(out)


COMMANDS = _commands()


def test_there_are_benchmarks_and_no_loose_scripts_left() -> None:
    assert len(COMMANDS) >= 10
    leftovers = sorted(p.name for p in (ROOT / "scripts").glob("*")) if (
        ROOT / "scripts").exists() else []
    assert leftovers == [], f"scripts/ should be gone, still there: {leftovers}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_zero_with_a_usage_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)), f"{name} has no main(argv)"
    assert module.__doc__, f"{name} has no docstring"
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_python_dash_m_runs_a_benchmark() -> None:
    r = subprocess.run([sys.executable, "-m", COMMANDS[0], "--help"], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
