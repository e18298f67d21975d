from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.artifact import ArtifactError, read_manifest
from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.loading import load_text_artifact, save_text_artifact
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig


@pytest.fixture()
def artifact(tmp_path: Path) -> tuple[Path, MultiExitTextClassifier]:
    torch.manual_seed(1)
    tok = tiny_tokenizer()
    m = MultiExitTextClassifier.from_config(
        tiny_backbone_config("bert", vocab_size=len(tok)), tok, TextClassifierConfig(num_labels=2))
    save_text_artifact(m, tmp_path / "a", {"name": "t", "labels": ["neg", "pos"]})
    return tmp_path / "a", m.eval()


def test_roundtrip_gives_identical_logits(artifact: tuple[Path, MultiExitTextClassifier]) -> None:
    path, m = artifact
    loaded = load_text_artifact(path)
    enc = m.encode(["great film", "dull"])
    torch.testing.assert_close(loaded.model.all_exit_logits(loaded.model.encode(
        ["great film", "dull"])), m.all_exit_logits(enc))
    assert loaded.manifest["num_exits"] == 3
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))


def test_tampered_weights_are_refused(artifact: tuple[Path, MultiExitTextClassifier]) -> None:
    path, _ = artifact
    with open(path / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(ArtifactError, match="model.safetensors sha256 mismatch"):
        load_text_artifact(path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(kind="captioner"), "expected 'text-classifier'"),
    (lambda m: m.pop("files"), "no file hashes"),
])
def test_bad_manifest_is_refused(artifact: tuple[Path, MultiExitTextClassifier], edit,
                                 message: str) -> None:
    path, _ = artifact
    man = json.loads((path / "manifest.json").read_text())
    edit(man)
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=message):
        load_text_artifact(path)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(tmp_path)
