"""export --format hf: the last exit as a standard transformers classifier, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.artifact import ArtifactError
from models.build.data import tiny_sentiment
from models.build.export_hf import export_hf
from models.build.recipes import BuildOptions, build
from models.build.tiny import save_tiny_classifier
from models.loading import load_text_artifact


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "roberta"])
def test_round_trip_equals_eeserve_full_depth(tmp_path: Path, family: str) -> None:
    ds = tiny_sentiment(100)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": ds.label_names[y]})
                              for t, y in zip(ds.train.texts, ds.train.labels, strict=True)))
    src = save_tiny_classifier(family, tmp_path / "clf", seed=1)
    art = tmp_path / "art"
    build("from-classifier", BuildOptions(out=art, source=str(src), data_file=str(data),
                                          progress=False, epochs=1, device="cpu"))
    report = export_hf(art, tmp_path / "hf")
    assert report.max_abs_diff <= 1e-5 and "1e-05" in report.summary()
    # a plain transformers user: Auto classes, local files only, no remote code
    hf = AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / "hf"), local_files_only=True, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    texts = ds.test.texts[:6]
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    model = load_text_artifact(art).model
    ours = model.all_exit_logits(model.encode(texts))[:, -1]  # (B, C)
    with torch.no_grad():
        theirs = hf(**enc).logits
    assert (ours - theirs).abs().max() <= 1e-5


def test_joint_recipe_is_refused_in_one_line(tiny_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        export_hf(tiny_artifact, tmp_path / "hf")
    assert "mean-pools" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()
