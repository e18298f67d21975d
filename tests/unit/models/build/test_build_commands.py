"""The model-building commands: `python -m models.build.finetune_hf` / `models.build.hf_twin`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.build import hf_twin
from models.loading import load_text_artifact

ROOT = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("module", ["models.build.finetune_hf", "models.build.hf_twin"])
def test_help_exits_zero(module: str) -> None:
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: python -m {module}")


def test_hf_twin_refuses_a_missing_artifact_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = subprocess.run([sys.executable, "-m", "models.build.hf_twin", str(missing),
                        str(tmp_path / "out")], cwd=ROOT, text=True, capture_output=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("hf_twin: error: ")
    assert str(missing) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_hf_twin_writes_a_standard_classifier(tiny_artifact: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "twin"
    assert hf_twin.main([str(tiny_artifact), str(out)]) == 0
    assert "speed twin" in capsys.readouterr().out
    twin = AutoModelForSequenceClassification.from_pretrained(
        str(out), local_files_only=True, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ours = load_text_artifact(tiny_artifact).model
    assert type(twin).__name__ == "BertForSequenceClassification"
    assert twin.config.id2label == {0: "negative", 1: "positive"}
    # the artifact's encoder and last exit head, copied (first-token pooling: answers differ)
    head = ours.heads[-1]
    assert torch.equal(twin.classifier.weight, head.out.weight)
    assert torch.equal(twin.bert.pooler.dense.weight, head.dense.weight)
    texts = ["a good film", "a bad film"]
    enc = tok(texts, padding=True, return_tensors="pt")
    mine = ours.encode(texts)
    assert torch.equal(enc["input_ids"], mine.input_ids)
    with torch.no_grad():
        hidden = twin.bert(**enc).last_hidden_state  # (B, T, H)
        ref = ours.backbone(input_ids=mine.input_ids,
                            attention_mask=mine.attention_mask).last_hidden_state
        logits = twin(**enc).logits  # (B, C)
    assert torch.allclose(hidden, ref, atol=1e-5)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
