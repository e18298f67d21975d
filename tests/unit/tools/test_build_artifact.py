"""tools/commands/train.py `build_artifact`: a recipe, then a captioner's policies fitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.artifact import read_manifest
from models.build.recipes import RECIPES, BuildOptions, build
from policies.names import CAPTION_DEFAULT_POLICY, CAPTION_POLICIES
from tools.commands.train import build_artifact


def test_the_recipe_table_names_every_recipe_the_cli_lists() -> None:
    assert set(RECIPES) == {"text-default", "text-base", "backbone", "tiny-text",
                            "from-classifier", "caption-default", "tiny-caption"}


@pytest.mark.slow
def test_a_recipe_builds_and_build_artifact_calibrates_a_captioner(tmp_path: Path) -> None:
    opts = BuildOptions(out=tmp_path / "bare", device="cpu", progress=False)
    build("tiny-caption", opts)
    assert read_manifest(opts.out)["policies"] == {}  # recipes build; fitting is policies/fit

    out = tmp_path / "calibrated"
    m = build_artifact("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    assert m == read_manifest(out, verify=False)
    assert set(m["policies"]) == set(CAPTION_POLICIES)
    assert m["default_policy"] == CAPTION_DEFAULT_POLICY
    assert m["calibrated_on"] == {"backend": "torch", "precision": "fp32"}
