"""CLI of bring-your-own-model: train --backbone / --from-classifier flags, export --format hf."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.build.data import tiny_sentiment
from models.build.tiny import save_tiny_classifier
from tools.cli import main


def _tiny_data(path: Path) -> Path:
    ds = tiny_sentiment(90)
    path.write_text("\n".join(json.dumps({"text": t, "label": ds.label_names[y]})
                              for t, y in zip(ds.train.texts, ds.train.labels, strict=True)))
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("eeserve: error:")
    return err[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--out", "o"], "give exactly one of RECIPE"),
    (["train", "tiny-text", "--backbone", "x", "--out", "o"], "got tiny-text, --backbone"),
    (["train", "--from-classifier", "nope", "--out", "o"], "nope: no such directory"),
    (["train", "--backbone", "nope", "--out", "o"], "not a known backbone"),
    (["train", "tiny-text", "--out", "o", "--max-length", "4"], "--max-length must be in [8,"),
    (["train", "tiny-text", "--out", "o", "--distill", "-1"], "--distill must be in [0,"),
    (["train", "tiny-text", "--out", "o", "--batch-size", "0"], "--batch-size must be in [1,"),
    (["train", "tiny-text", "--out", "o", "--data", "nofile"], "nor a named dataset"),
])
def test_bad_flags_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                message: str) -> None:
    assert message in _error(capsys, argv)


def test_from_classifier_without_data_says_what_is_needed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_tiny_classifier("bert", tmp_path / "clf")
    line = _error(capsys, ["train", "--from-classifier", str(src), "--out", str(tmp_path / "o")])
    assert "needs --data FILE" in line and "text,label" in line


def test_from_classifier_then_export_hf(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    src = save_tiny_classifier("distilbert", tmp_path / "clf")
    art = tmp_path / "art"
    assert main(["train", "--from-classifier", str(src), "--data",
                 str(_tiny_data(tmp_path / "d.jsonl")), "--out", str(art), "--epochs", "1",
                 "--head-lr", "0.01", "--distill", "0.5", "--max-length", "32", "--quiet"]) == 0
    man = json.loads((art / "manifest.json").read_text())
    assert man["recipe"]["train"]["head_lr"] == 0.01 and man["head"]["max_length"] == 32
    capsys.readouterr()
    assert main(["export", str(art), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "DistilBertForSequenceClassification" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").exists()


def test_unsupported_architecture_is_exactly_one_line(tmp_path: Path) -> None:
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(GPT2Config(n_layer=2, n_embd=32, n_head=4).to_json_string())
    res = subprocess.run([sys.executable, "-m", "service", "train", "--backbone", str(d),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[3]),
                              "EESERVE_DATA_DIR": str(tmp_path / "data")})
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported architecture 'gpt2'" in lines[0], res.stderr
    assert "BERT" in lines[0] and "ELECTRA" in lines[0]
