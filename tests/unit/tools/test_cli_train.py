"""The train command end to end on the tiny recipe, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _eeserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "EESERVE_DATA_DIR": str(cwd / "data"),
                               "PYTHONPATH": str(Path(__file__).parents[3])})


def test_tiny_text_builds_a_complete_artifact(tmp_path: Path) -> None:
    res = _eeserve("train", "tiny-text", "--out", str(tmp_path / "m"), "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert man["num_exits"] == 3 and man["labels"] == ["negative", "positive"]
    assert set(man["latency"]["per_layer_ms"]) == {"1", "8"}
    assert {"model.safetensors", "exit_logits.safetensors"} <= set(man["files"])
    assert man["exit_accuracy"]["test"][-1] > 0.8


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("txt,lab\na,b\n", "missing column"),
    ("text,label\n" + "x,1\n" * 10, "only one class"),
    ("text,label\n,1\nb,0\nc,1\n", "empty 'text'"),
])
def test_bad_data_ends_with_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    data = tmp_path / "d.csv"
    if content is not None:
        data.write_text(content)
    res = _eeserve("train", "tiny-text", "--out", str(tmp_path / "m"), "--data", str(data),
                   "--quiet", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eeserve: error:"), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr


def test_unknown_recipe_is_one_line(tmp_path: Path) -> None:
    res = _eeserve("train", "nope", "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert res.returncode == 2 and "unknown recipe 'nope'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("setting", "message"), [
    ("distill", "--set takes NAME=VALUE, got 'distill'"),
    ("distil=0", "unknown training setting 'distil'"),
    ("threads=0", "threads must be >= 1"),
])
def test_bad_training_setting_is_one_line(tmp_path: Path, setting: str, message: str) -> None:
    res = _eeserve("train", "tiny-text", "--out", str(tmp_path / "m"), "--set", setting,
                   "--quiet", cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
