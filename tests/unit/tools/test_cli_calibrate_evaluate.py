"""`eeserve calibrate` and `eeserve evaluate` on a small artifact, and their one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.artifact import ExitLogits, read_manifest, save_exit_logits, write_manifest
from tools.cli import main

K = 3


def _logits(n: int, seed: int) -> ExitLogits:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    logits = torch.randn(n, K, 2, generator=g)  # (N, K, 2)
    strength = torch.linspace(1.0, 3.0, K) * (torch.rand(n, 1, generator=g) + 0.2)  # (N, K)
    logits[torch.arange(n), :, labels] += strength
    return ExitLogits(logits, labels)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "art"
    root.mkdir()
    (root / "model.safetensors").write_bytes(b"stub")
    save_exit_logits(root, {"val": _logits(300, 0), "test": _logits(300, 1)})
    write_manifest(root, {"name": "fake", "kind": "text", "num_exits": K, "labels": ["n", "p"],
                          "policies": {}, "default_policy": "none",
                          "latency": {"device": "cpu", "machine": "x86_64 2 cpus",
                                      "per_layer_ms": {"8": [2.0, 2.0, 2.0]},
                                      "embed_ms": {"8": 1.0}, "head_ms": {"8": 0.1}}})
    return root


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, message: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("eeserve: error:"), err
    assert message in err[0]


def test_calibrate_fits_and_prints_every_policy(artifact: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(artifact), "--policy", "beem", "--policy", "maxprob"]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(artifact)
    assert f"default policy: {manifest['default_policy']}" in out and "maxprob" in out
    speed = {n: manifest["policies"][n]["operating_point"]["cost_speedup"]
             for n in ("beem", "maxprob")}  # the default is the faster on validation
    assert manifest["default_policy"] == max(speed, key=lambda n: (speed[n], n == "beem"))
    assert set(manifest["policies"]) == {"beem", "maxprob"}
    assert manifest["policies"]["beem"]["fit"]["confidence"] == 0.8


def test_evaluate_writes_table_json_and_plot(artifact: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(artifact), "--policy", "beem", "--policy", "maxprob"]) == 0
    capsys.readouterr()
    out_json, out_png = tmp_path / "f" / "r.json", tmp_path / "f" / "p.png"
    code = main(["evaluate", str(artifact), "--split", "test", "--json", str(out_json),
                 "--plot", str(out_png), "--policy", "beem", "--policy", "maxprob",
                 "--policy", "static", "--policy", "oracle-label"])
    assert code == 0
    out = capsys.readouterr().out
    assert "layer x" in out and "cost x" in out and "calibrated" in out
    assert "kept <= 0.5 pt" in out and "best layer x at <= 0.5 pt" in out
    doc = json.loads(out_json.read_text())
    assert doc["split"] == "test" and doc["n"] == 300
    assert set(doc["policies"]) == {"beem", "maxprob", "static", "oracle-label"}
    assert doc["policies"]["beem"]["calibrated"]["parameter"] == "calibrated"
    assert doc["costs"]["unit"] == "ms"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["calibrate", "{dir}", "--policy", "oracle"], "unknown policy 'oracle'"),
    (["calibrate", "{dir}", "--tolerance", "2"], "tolerance=2.0 out of range"),
    (["calibrate", "{dir}", "--confidence", "0.1"], "confidence=0.1 out of range"),
    (["calibrate", "{dir}", "--policy", "eenet", "--eenet-budget", "0.05"],
     "budget=0.05 is below the first exit's cost"),
    (["calibrate", "{dir}", "--policy", "eenet", "--eenet-budget", "1.5"],
     "budget=1.5 is above the full cost"),
    (["calibrate", "{dir}", "--policy", "beem", "--beem-target-speedup", "9"],
     "target_speedup=9.0 out of range [1.0, 3.0]"),
    (["calibrate", "{dir}/nope"], "no such artifact directory"),
    (["evaluate", "{dir}", "--split", "train"], "--split must be one of val, test"),
    (["evaluate", "{dir}", "--plot", "x.svg"], "the plot is a PNG file"),
    (["evaluate", "{dir}", "--eenet-budgets", "0.5,x"], "must be numbers"),
    (["evaluate", "{dir}", "--eenet-budgets", "0.5,2"], "2.0 is not in (0, 1]"),
    (["evaluate", "{dir}", "--policy", "pabee"], "cannot evaluate ['pabee']"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, artifact: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main([a.format(dir=artifact) for a in argv])
    _one_line_error(capsys, code, message)


def test_a_directory_without_cached_logits(artifact: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (artifact / "exit_logits.safetensors").unlink()
    _one_line_error(capsys, main(["evaluate", str(artifact)]), "missing file exit_logits")
