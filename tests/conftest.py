"""Markers come from the folder (unit / integration / e2e)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
# The server default is one engine process per core; tests (and the servers they start) run
# the engine in-process unless they ask for engine processes (`workers=2`, `--workers 2`).
os.environ.setdefault("EESERVE_WORKERS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, rel.parts[0]))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny-text artifact (3 exits, seconds to build), calibrated when possible."""
    from models.build.recipes import BuildOptions, build

    out = tmp_path_factory.mktemp("artifacts") / "tiny-text"
    build("tiny-text", BuildOptions(out=out, device="cpu", progress=False))
    try:
        from policies.fit.calibration import calibrate_artifact
    except ImportError:  # pragma: no cover -- calibration lands with the policies
        return out
    calibrate_artifact(out)
    from models.build.onnx_export import recheck_policies
    from policies.fit.parity import policy_mismatches

    recheck_policies(out, policy_mismatches)  # the graphs exported by the build, vs the policies
    return out


@pytest.fixture(scope="session")
def tiny_caption_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny-caption artifact (3 decoder layers, 32-px images; seconds to build)."""
    from models.build.recipes import BuildOptions, build

    out = tmp_path_factory.mktemp("artifacts") / "tiny-caption"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    return out
