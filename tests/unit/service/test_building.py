"""service/building.py and the build worker: estimates, lines, queueing, publishing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.progress import Progress
from service.building import Builder, BuildJob, BuildState, _last_line
from tools import build_worker
from tools.commands import serve


def _job(name: str = "text-default", estimate: float = 1600.0) -> BuildJob:
    return BuildJob(name, name, "text-classifier", Path("/tmp/a") / name, estimate,
                    {"training": 90.0, "training stage 2": 10.0})


async def _never(job: BuildJob) -> None:
    raise AssertionError("not called")


def test_a_training_stage_adds_what_follows_it() -> None:
    st = BuildState(_job(), "building", Progress("training", 310, 1060, 630.0), time.monotonic())
    assert st.eta_s() == 720.0
    assert st.line(st.eta_s()) == "training step 310/1060, ~12 min left"
    st.progress = Progress("training stage 2", 5, 50, 20.0)  # the longest matching key wins
    assert st.eta_s() == 30.0


def test_before_training_the_measured_whole_build_less_time_spent() -> None:
    st = BuildState(_job(), "building", Progress("downloading the backbone and data"),
                    time.monotonic() - 100)
    eta = st.eta_s()
    assert eta is not None and 1490 <= eta <= 1500
    assert st.line(eta) == "downloading the backbone and data, ~25 min left"
    st.trained = True  # after training, a stage without steps has no honest estimate
    st.progress = Progress("caching exit logits")
    assert st.eta_s() is None and st.line(None) == "caching exit logits"


def test_queued_builds_wait_for_the_ones_before_them() -> None:
    b = Builder([_job("text-default"), _job("caption-default", 600.0)], _never)
    b.states[0].state, b.states[0].started = "building", time.monotonic()
    b.states[0].progress = Progress("training", 10, 100, 300.0)
    (first, eta1), (second, eta2) = b.waiting()
    assert (eta1, eta2) == (390.0, 990.0)
    assert b.summary() == ("text-default: training step 10/100, ~6 min left; "
                           "caption-default: queued, ~16 min left")
    infos = b.infos()
    assert [i.details["build"]["state"] for i in infos] == ["building", "queued"]
    assert not any(i.ready for i in infos) and infos[1].details["build"]["eta_s"] == 990


def test_done_builds_leave_and_failed_ones_are_reported() -> None:
    b = Builder([_job("a"), _job("b")], _never)
    b.states[0].state = "done"
    b.states[1].state, b.states[1].error = "failed", "exit status 1: boom"
    [(st, eta)] = b.waiting()
    assert st.job.name == "b" and eta is None
    assert b.infos()[0].error == "build failed: exit status 1: boom"


def test_last_line_of_a_log_splits_carriage_returns(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("train: 1/3\rtrain: 2/3\rValueError: no data\n\n")
    assert _last_line(log) == "ValueError: no data"
    assert _last_line(tmp_path / "none.log") == "no log"


def test_publish_replaces_a_partial_directory_but_keeps_a_whole_one(tmp_path: Path) -> None:
    out, staging = tmp_path / "m", tmp_path / ".m.building"
    out.mkdir()
    (out / "junk").write_text("partial")
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    build_worker.publish(staging, out)
    assert (out / "manifest.json").exists() and not (out / "junk").exists()
    assert not staging.exists()
    staging.mkdir()
    (staging / "other").write_text("x")
    build_worker.publish(staging, out)  # `out` is whole: the new build is dropped
    assert not (out / "other").exists() and not staging.exists()


def test_serve_builds_only_the_missing_default_models(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.commands import train

    text, cap = tmp_path / "text", tmp_path / "cap"
    monkeypatch.setattr(train, "DEFAULT_MODEL_DIR", text)
    monkeypatch.setattr(train, "DEFAULT_CAPTION_DIR", cap)
    ready, jobs = serve.default_models()
    assert ready == [] and [j.name for j in jobs] == ["text-default", "caption-default"]
    text.mkdir()
    (text / "manifest.json").write_text("{}")
    ready, jobs = serve.default_models()
    assert ready == [str(text)] and [j.out for j in jobs] == [cap]


def test_the_worker_skips_a_built_model_and_cleans_up_after_a_failure(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    assert build_worker.run("tiny-text", out, "cpu") is False  # nothing rebuilt
    other = tmp_path / "n"
    stale = build_worker.staging_dir(other)
    stale.mkdir()
    (stale / "half-written").write_text("x")
    with pytest.raises(SystemExit, match="unknown recipe"):
        build_worker.run("no-such-recipe", other, "cpu")
    assert not stale.exists() and not other.exists()
