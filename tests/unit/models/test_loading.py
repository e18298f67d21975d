"""models/loading.py: the loader table by manifest kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.artifact import WEIGHTS, ArtifactError, write_manifest
from models.caption_loading import CAPTION_KIND
from models.loading import LOADERS, TEXT_KIND, load_artifact


def test_every_artifact_kind_has_one_loader() -> None:
    assert set(LOADERS) == {TEXT_KIND, CAPTION_KIND}


def test_an_unknown_kind_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS).write_bytes(b"weights")
    write_manifest(tmp_path, {"kind": "regressor", "name": "x"})
    with pytest.raises(ArtifactError, match="unknown artifact kind 'regressor'"):
        load_artifact(tmp_path)


def test_a_text_artifact_loads_through_the_table(tiny_artifact: Path) -> None:
    loaded = load_artifact(tiny_artifact)
    assert loaded.kind == TEXT_KIND and loaded.backend == "torch"
    assert loaded.model.num_exits == loaded.manifest["num_exits"] == 3
