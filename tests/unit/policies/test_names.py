"""One source for policy names: the registry, calibration and the API schemas agree with
policies.names, and that module imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

from policies.fit.calibration import FITTERS
from policies.names import (
    CAPTION_DEFAULT_POLICY,
    CAPTION_POLICIES,
    DEFAULT_POLICY,
    POLICY_NAMES,
    PolicyName,
    is_policy_name,
    known_policy,
)
from policies.registry import REGISTRY
from service.schemas import CaptionBody, ClassifyBody

ROOT = Path(__file__).resolve().parents[3]


def _schema_choices(model: type[ClassifyBody] | type[CaptionBody]) -> list[str]:
    prop = model.model_json_schema()["properties"]["policy"]
    enums = [branch["enum"] for branch in prop["anyOf"] if "enum" in branch]
    assert len(enums) == 1, prop
    return list(enums[0])


def test_registry_holds_exactly_the_named_policies() -> None:
    assert list(REGISTRY) == list(POLICY_NAMES)
    assert POLICY_NAMES == get_args(PolicyName)
    assert len(set(POLICY_NAMES)) == len(POLICY_NAMES)


def test_schema_choices_equal_the_registry() -> None:
    assert sorted(_schema_choices(ClassifyBody)) == sorted(REGISTRY)
    assert sorted(_schema_choices(CaptionBody)) == sorted(REGISTRY)


def test_calibration_fits_every_registered_policy() -> None:
    assert list(FITTERS) == list(REGISTRY)


def test_defaults_are_registered_policies() -> None:
    assert DEFAULT_POLICY in REGISTRY
    assert CAPTION_DEFAULT_POLICY in CAPTION_POLICIES
    assert set(CAPTION_POLICIES) <= set(REGISTRY)


def test_known_policy_keeps_only_registered_names() -> None:
    assert known_policy("beem") == "beem"
    assert known_policy("bem") is None
    assert known_policy(None) is None
    assert is_policy_name("none") and not is_policy_name("None")


def test_names_module_imports_no_torch() -> None:
    code = "import sys, policies, policies.names; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
