"""bench/studies end to end on the tiny-text artifact: the run record and figures in range.

The studies read cached exit logits, so on the 3-exit tiny model they run in seconds: BEEM's
diagnostics, the calibrated points per backend/precision, the guard on validation halves, and
the alarm's power on synthetic streams (no model at all).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.studies import alarm_power, beem, guard_halves, precision

K = 3  # exits of the tiny-text recipe


def _record(path: Path, benchmark: str) -> dict[str, Any]:
    rec: dict[str, Any] = json.loads(path.read_text())
    assert rec["benchmark"] == benchmark
    assert {"cpu", "cpus", "commit", "versions"} <= set(rec["machine"])
    assert rec["started"] and rec["command"]
    return rec


def _in_unit(v: float) -> bool:
    return math.isnan(v) or 0.0 <= v <= 1.0


def _speedup(v: float) -> bool:
    """A speed-up of an early exit policy over K exits: 1 (all rows to the last) .. K."""
    return 1.0 - 1e-9 <= v <= K + 1e-9


def test_beem_diagnostics_on_the_tiny_artifact(tiny_artifact: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures" / "beem.json"  # the folder is made
    assert beem.main([str(tiny_artifact), "--split", "test", "--powers", "1", "4",
                      "--json", str(out)]) == 0
    rec = _record(out, "studies.beem")
    assert rec["settings"] == {"backend": "torch", "precision": "fp32", "threads": 1}
    res = rec["results"]
    assert res["split"] == "test" and res["tolerance"] == 0.005
    assert [r["exit"] for r in res["streaks"]] == list(range(2, K))
    for r in res["streaks"]:
        assert all(_in_unit(r[k]) for k in ("agree", "acc_agree", "acc_break"))
    families = set(res["auc_same_as_last"])
    assert {"maxprob", "beem-c", "beem-a", "beem-c-normalised", "beem-uniform-reset0"} \
        <= families
    assert families == set(res["best_global"])
    for aucs in res["auc_same_as_last"].values():
        assert len(aucs) == K - 1 and all(_in_unit(a) for a in aucs)
    for best in res["best_global"].values():  # hindsight: within the tolerance by construction
        assert _speedup(best["layer_x"])
        assert best["loss_pt"] <= 0.5 + 1e-6
    assert [r["power"] for r in res["sharpness"]] == [1.0, 4.0]
    for r in res["sharpness"]:
        assert len(r["auc"]) == K - 1 and all(_in_unit(a) for a in r["auc"])
        assert _speedup(r["layer_x"]) and _speedup(r["val_fit_layer_x"])
        assert _speedup(r["hindsight"]["layer_x"])
        assert -100.0 <= r["loss_pt"] <= 100.0
    assert "acc|agree" in capsys.readouterr().out


def test_precision_points_replays_every_calibration(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "points.json"
    assert precision.main(["points", str(tiny_artifact), "--json", str(out)]) == 0
    rec = _record(out, "studies.precision.points")
    res = rec["results"]
    backends = rec["settings"]["backend"]
    assert backends[0] == "torch" and rec["settings"]["precision"][0] == "fp32"
    calibrations = [k for k in res if k != "fp32_last_exit_test"]
    assert calibrations[0] == "torch-fp32" and len(calibrations) == len(backends)
    ref = res["fp32_last_exit_test"]
    assert 0.0 <= ref <= 100.0
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert res["torch-fp32"], "the tiny artifact is calibrated: some online policy replays"
    assert set(res["torch-fp32"]) <= set(manifest["policies"])
    for key in calibrations:
        for name, p in res[key].items():
            assert 0.0 <= p["accuracy"] <= 100.0, (key, name)
            assert p["change_vs_fp32_last_pt"] == pytest.approx(p["accuracy"] - ref, abs=0.011)
            assert _speedup(p["layer_speedup"])


def test_guard_halves_counts_broken_promises(tiny_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "halves.json"
    assert guard_halves.main([str(tiny_artifact), "--policies", "maxprob", "--guards", "exact",
                              "--rounds", "2", "--test", "--json", str(out)]) == 0
    res = _record(out, "studies.guard_halves")["results"]
    s = res["halves"]["exact"]["maxprob"]
    assert s["rounds"] == 2 and 0 <= s["broken"] <= 2
    assert len(res["halves_rounds"]["exact"]["maxprob"]) == 2
    assert s["median_loss_pt"] <= s["max_loss_pt"] <= 100.0
    assert _speedup(s["median_layer_x"]) and s["median_cost_x"] >= 1.0 - 1e-9
    t = res["test"]["exact"]["maxprob"]
    assert _speedup(t["layer_x"]) and -100.0 <= t["loss_pt"] <= 100.0


def test_alarm_power_fires_on_a_broken_promise_and_not_on_a_kept_one(tmp_path: Path) -> None:
    out = tmp_path / "alarm.json"
    assert alarm_power.main(["--seeds", "3", "--checks", "400", "--out", str(out)]) == 0
    rec = _record(out, "studies.alarm_power")
    assert rec["settings"] == {}
    res = rec["results"]
    assert (res["seeds"], res["checks"], res["window"], res["look_every"]) == (3, 400, 2000, 25)
    rows = {r["true_agreement"]: r for r in res["rows"]}
    assert set(rows) == {0.99, 0.98, 0.97, 0.96, 0.95, 0.93, 0.90, 0.80}
    assert all(0.0 <= r["fired_share"] <= 1.0 for r in rows.values())
    assert rows[0.99]["fired_share"] == 0.0 and rows[0.99]["median_checks_to_fire"] is None
    assert rows[0.80]["fired_share"] == 1.0  # 17 points under the promise: at the first looks
    assert 100 <= rows[0.80]["median_checks_to_fire"] <= rows[0.80]["p90_checks_to_fire"] <= 400


def test_markdown_table_writes_the_byom_layout() -> None:
    from bench.studies._common import markdown_table

    assert markdown_table(["", "HF", "joint"], [["last-exit test accuracy", "91.00 %", "–"]]) \
        == "| | HF | joint |\n|---|---|---|\n| last-exit test accuracy | 91.00 % | – |"
