"""models/environment.py: the answer-shaping versions recorded per stage, and drift at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.environment import ABSENT, ANSWER_SHAPING, environment_drift, stamp, versions


def test_versions_name_every_answer_shaping_package_and_mark_absent_ones() -> None:
    got = versions((*ANSWER_SHAPING, "no-such-distribution-eeserve"))
    assert got["torch"].startswith("2.13.0") and got["transformers"][0].isdigit()
    assert got["no-such-distribution-eeserve"] == ABSENT


def test_stamp_keeps_earlier_stages_and_refuses_unknown_ones() -> None:
    manifest = stamp({}, "build")
    manifest["environment"]["build"]["tokenizers"] = "0.1.0"
    stamp(manifest, "calibrate")
    assert set(manifest["environment"]) == {"build", "calibrate"}
    assert manifest["environment"]["build"]["tokenizers"] == "0.1.0"
    with pytest.raises(ValueError, match="stage 'train'"):
        stamp(manifest, "train")


def test_drift_lists_each_differing_package_once_with_the_stages_that_ran_it() -> None:
    now = {"torch": "2.13.0", "transformers": "5.25.0", "onnxruntime": "1.32.0"}
    manifest = {"environment": {
        "build": {"torch": "2.13.0", "transformers": "5.23.0"},
        "onnx": {"onnxruntime": "1.31.0", "transformers": "5.23.0"},
        "calibrate": {"onnxruntime": "1.32.0"},
    }}
    assert environment_drift(manifest, now) == [
        "transformers 5.25.0 serves, 5.23.0 ran build/onnx",
        "onnxruntime 1.32.0 serves, 1.31.0 ran onnx",
    ]
    assert environment_drift({"environment": {"build": now}}, now) == []
    assert environment_drift({}, now) == []  # artifacts built before versions were recorded


def test_a_built_artifact_records_every_stage_it_ran_here(tiny_artifact: Path) -> None:
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert {"build", "onnx", "calibrate"} <= set(manifest["environment"])
    assert manifest["environment"]["build"] == versions()
    assert environment_drift(manifest) == []
