"""Offline evaluation: sweeps per policy, calibrated points on held-out data, promises kept."""

from __future__ import annotations

import json

import pytest
import torch

from policies import PolicyError
from policies.costs import layer_costs
from policies.fit.calibration import CalibrationConfig, Split, calibrate
from policies.fit.eenet_fit import EENetFitConfig
from policies.fit.evaluation import EvaluationReport, eenet_budget_summary, evaluate

Logits = tuple[torch.Tensor, torch.Tensor]
CFG = CalibrationConfig(eenet=EENetFitConfig(epochs=60, restarts=1))


@pytest.fixture(scope="module")
def report(val_logits: Logits, test_logits: Logits) -> EvaluationReport:
    val, test = Split(*val_logits, layer_costs(6)), Split(*test_logits, layer_costs(6))
    cals = {n: c.to_manifest() for n, c in calibrate(val, config=CFG).items()}
    return evaluate(val, test, "test", cals, config=CFG, budgets=(0.4, 0.6, 0.8))


def test_every_policy_and_oracle_is_reported(report: EvaluationReport) -> None:
    names = [p.name for p in report.policies]
    assert names == ["beem", "beem-c", "beem-a", "beem-c-normalised", "beem-a-normalised",
                     "eenet", "maxprob", "entropy", "patience", "static", "none", "oracle-label",
                     "oracle-consistency"]
    by = {p.name: p for p in report.policies}
    assert len(by["static"].curve) == 6 and len(by["patience"].curve) == 6
    assert [p.value for p in by["eenet"].curve] == [0.4, 0.6, 0.8]
    assert len(by["beem-c"].curve) > 10 and by["beem-c"].curve[-1].value is None
    assert by["oracle-label"].calibrated is None and by["oracle-label"].kept is None
    json.dumps(report.to_json())


def test_kept_compares_the_held_out_loss_with_the_promise(report: EvaluationReport) -> None:
    checked = 0
    for rep in report.policies:
        if rep.calibrated is not None and rep.promised_tolerance is not None:
            assert rep.promised_tolerance == 0.005
            assert rep.kept == (rep.calibrated.point.loss <= 0.005)
            checked += 1
    assert checked == 10  # all but `none` (no promise) and the oracles (not calibrated)
    beem = next(p for p in report.policies if p.name == "beem")
    assert beem.kept and beem.calibrated is not None
    assert beem.calibrated.point.layer_speedup > 1.1


def test_best_within_tolerance_is_the_fastest_qualifying_point(
        report: EvaluationReport) -> None:
    rep = next(p for p in report.policies if p.name == "beem-c")
    best = rep.best
    assert best is not None and best.point.loss <= 0.005
    assert rep.calibrated is not None
    ok = [p for p in [*rep.curve, rep.calibrated] if p.point.loss <= 0.005]
    assert best.point.layer_speedup == max(p.point.layer_speedup for p in ok)


def test_eenet_budgets_are_met_on_held_out_data(report: EvaluationReport) -> None:
    summary = eenet_budget_summary(report)
    assert summary is not None and summary["budgets"] == 3
    assert summary["max_abs"] <= 0.03


def test_the_last_exit_is_the_reference(report: EvaluationReport, test_logits: Logits) -> None:
    logits, labels = test_logits
    assert report.last_accuracy == pytest.approx(
        float((logits[:, -1].argmax(-1) == labels).double().mean()))
    none = next(p for p in report.policies if p.name == "none")
    assert none.curve[0].point.loss == 0.0 and none.curve[0].point.layer_speedup == 1.0


def test_unknown_names_and_mismatched_splits(val_logits: Logits) -> None:
    val = Split(*val_logits, layer_costs(6))
    with pytest.raises(PolicyError, match=r"cannot evaluate \['pabee'\]"):
        evaluate(val, val, "val", {}, ["pabee"])
    other = Split(val_logits[0][:, :3], val_logits[1], layer_costs(3))
    with pytest.raises(PolicyError, match="validation has 6 exits, test has 3"):
        evaluate(val, other, "test", {})
