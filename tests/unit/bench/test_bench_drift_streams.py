"""bench.reliability.drift_streams on the tiny-text artifact: streams go through the server's
LiveAgreement (alarm, reactions), the phases around the alarm, the default-policy rule, and the
whole run (tiny texts in place of the real pools, which need the registries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.reliability import drift_streams as ds
from models.artifact import read_manifest
from models.build.data import tiny_sentiment

K = 3  # exits of the tiny-text recipe


def _loose(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A copy whose max-prob and BEEM leave early (the tiny calibration keeps every row)."""
    out = tmp_path / "tiny-loose"
    shutil.copytree(tiny_artifact, out)
    m = json.loads((out / "manifest.json").read_text())
    m["policies"]["maxprob"]["params"]["thresholds"] = [0.7, 0.7, None]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _pools(n_in: int = 40, n_shift: int = 40) -> tuple[ds.Pool, int]:
    """In-domain rows whose exits agree, shifted rows whose confident exit 1 is wrong."""
    good = torch.tensor([[4.0, 0.0], [4.0, 0.0], [4.0, 0.0]])  # (K, C) class 0 everywhere
    bad = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])  # exit 1 says 0, the last 1
    logits = torch.cat([good.expand(n_in, K, 2), bad.expand(n_shift, K, 2)])
    labels = torch.cat([torch.zeros(n_in), torch.ones(n_shift)]).long()
    return ds.Pool("both", logits, labels), n_in


def _run(art: Path, reaction: str, mix: float = 1.0, requests: int = 1500) -> dict[str, Any]:
    m = read_manifest(art, verify=False)
    both, n_in = _pools()
    spec = ds.StreamSpec("maxprob", mix, 0.5, reaction, 0, requests, 400)
    return ds.run_stream(ds.ArtifactView(art, m), K, m["policies"]["maxprob"], both, n_in,
                         spec, look=25)


def test_a_broken_stream_fires_the_alarm_and_the_fallback_restores_the_promise(
        tiny_artifact: Path, tmp_path: Path) -> None:
    art = _loose(tiny_artifact, tmp_path)
    none = _run(art, "none")
    assert none["fired_at"] is not None and none["fired_at"] <= 300  # ~100 checks at rate 0.5
    assert none["requests"] == none["fired_at"] + 400  # stops `after` requests later
    assert none["before_all"]["loss_pt"] == pytest.approx(100.0)  # exit 1 is always wrong
    assert none["after_all"]["loss_pt"] == pytest.approx(100.0)  # nothing reacted
    fb = _run(art, "fallback")
    assert fb["fired_at"] == none["fired_at"]  # same requests and samples until the alarm
    assert fb["thresholds"][:-1] == [None, None]  # every early exit closed
    after = fb["after_all"]
    assert after["loss_pt"] <= 0.0 and after["layer_x"] == pytest.approx(1.0)
    assert fb["before_all"]["layer_x"] == pytest.approx(3.0)


def test_in_domain_traffic_keeps_the_alarm_silent(tiny_artifact: Path, tmp_path: Path) -> None:
    run = _run(_loose(tiny_artifact, tmp_path), "none", mix=0.0, requests=1000)
    assert run["fired_at"] is None and run["requests"] == 1000
    assert run["after_all"] is None and run["before_shifted"] is None
    assert run["before_all"]["agreement"] == 1.0


def test_the_default_is_the_fastest_policy_that_kept_its_promise_everywhere() -> None:
    row = {"loss_pt": 0.1, "cost_x": 1.5}
    table = {"eenet": {"in-domain": {"loss_pt": 0.0, "cost_x": 1.7},
                       "ff": {"loss_pt": 0.52, "cost_x": 1.6}},
             "beem": {"in-domain": row, "ff": row},
             "maxprob": {"in-domain": {"loss_pt": 0.2, "cost_x": 1.6}, "ff": row}}
    got = ds.choose_default(table, 0.5)
    assert got["kept"] == {"eenet": False, "beem": True, "maxprob": True}
    assert got["default"] == "maxprob"


def test_whole_stream_figures_weigh_the_phases_by_requests() -> None:
    run = {"before_all": {"requests": 100, "loss_pt": 1.0, "layer_x": 2.0},
           "after_all": {"requests": 300, "loss_pt": 0.0, "layer_x": 1.0}}
    assert ds.whole(run) == {"loss_pt": 0.25, "layer_x": pytest.approx(1.143, abs=1e-3)}
    assert ds.whole({"before_all": run["before_all"], "after_all": None}) == {
        "loss_pt": 1.0, "layer_x": 2.0}


def test_the_whole_run_writes_its_record(tiny_artifact: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_sentiment(n=80, seed=3)
    monkeypatch.setattr(ds, "LOADERS", {"tiny": lambda: (data.train.texts, data.train.labels)})
    monkeypatch.setenv("EESERVE_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "drift.json"
    assert ds.main([str(_loose(tiny_artifact, tmp_path)), "--streams", "tiny",
                    "--offline-pools", "", "--mixes", "1.0", "--policies", "maxprob",
                    "--rates", "0.5", "--reactions", "none,fallback", "--seeds", "1",
                    "--requests", "300", "--after", "50", "--in-domain-requests", "200",
                    "--false-seeds", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "reliability.drift_streams"
    assert (rec["settings"]["backend"], rec["settings"]["precision"]) == ("torch", "fp32")
    assert rec["settings"]["min_support"] == 100 and rec["machine"]["cpu"]
    res = rec["results"]
    assert set(res["offline"]["maxprob"]) == {"in-domain", "tiny"}
    assert [(r["stream"], r["reaction"]) for r in res["streams"]] == [
        ("tiny", "none"), ("tiny", "fallback")]
    assert res["false_alarms"]["maxprob@0.5"]["streams"] == 1
    capsys.readouterr()
    assert ds.main(["--table", str(out)]) == 0  # the tables again, from the record alone
    printed = capsys.readouterr().out
    assert "whole stream" in printed and printed.count("| tiny |") == 1
