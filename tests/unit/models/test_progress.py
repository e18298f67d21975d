"""models/progress.py: the build's progress file (atomic JSON, throttled, ETA per stage)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models import progress


@pytest.fixture
def pfile(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "p.json"
    progress.configure(path)
    yield path
    progress.configure(None)


def test_nothing_is_written_unless_configured(tmp_path: Path) -> None:
    progress.configure(None)
    progress.stage("training")
    progress.step("training", 1, 10)
    assert list(tmp_path.iterdir()) == []


def test_steps_write_stage_step_total_and_an_eta(pfile: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    clock = iter([100.0, 110.0, 200.0])  # first step seen, second step, last step
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.step("training", 1, 11)  # starts the stage at t=100: no pace known yet
    assert progress.read(pfile) == progress.Progress(
        "training", 1, 11, None, 0.0, json.loads(pfile.read_text())["updated_at"])
    progress.step("training", 2, 11)  # 10 s for one step, 9 steps left
    p = progress.read(pfile)
    assert p is not None and p.stage_eta_s == 90.0 and p.line() == "training step 2/11"
    progress.step("training", 11, 11)  # the last step is always written
    p = progress.read(pfile)
    assert p is not None and p.step == 11 and p.stage_eta_s == 0.0


def test_writes_within_a_stage_are_throttled_but_a_new_stage_is_not(pfile: Path) -> None:
    progress.step("training", 1, 100)
    progress.step("training", 2, 100)  # within MIN_INTERVAL_S of the first: skipped
    p = progress.read(pfile)
    assert p is not None and p.step == 1
    progress.stage("caching exit logits")
    p = progress.read(pfile)
    assert p is not None and p.line() == "caching exit logits" and p.step is None


def test_a_time_bound_caps_the_eta(pfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 100.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.step("training stage 1", 1, 1000, limit_s=120)
    progress.step("training stage 1", 2, 1000, limit_s=120)  # 99,800 s at this pace
    p = progress.read(pfile)
    assert p is not None and p.stage_eta_s == 20.0


def test_read_gives_none_for_missing_or_garbled_files(tmp_path: Path) -> None:
    assert progress.read(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert progress.read(tmp_path / "bad.json") is None
    (tmp_path / "wrong.json").write_text('{"step": 1}')
    assert progress.read(tmp_path / "wrong.json") is None
