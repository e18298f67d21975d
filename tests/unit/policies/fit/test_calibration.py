"""Calibration of every policy on cached validation logits, and writing it into an artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from models.artifact import read_manifest
from policies import PolicyError, build_policy
from policies.beem import cost_weights
from policies.costs import custom_costs
from policies.fit.calibration import (
    BEEM_POWERS,
    CalibrationConfig,
    PolicyCalibration,
    Split,
    calibrate,
    calibrate_artifact,
    choose_default,
    fit_sharpened,
)
from policies.fit.eenet_fit import EENetFitConfig
from policies.fit.sweep import operating_point
from policies.names import POLICY_NAMES as POLICIES
from policies.replay import replay

Logits = tuple[torch.Tensor, torch.Tensor]
COSTS = custom_costs([1.2, 2.2, 3.2, 4.2, 5.2, 6.2])  # an embedding cost in front of 6 layers
FAST_EENET = EENetFitConfig(epochs=60, restarts=1)


@pytest.fixture(scope="module")
def fitted(val_logits: Logits) -> dict[str, PolicyCalibration]:
    return calibrate(Split(*val_logits, COSTS), config=CalibrationConfig(eenet=FAST_EENET))


def test_every_policy_is_fitted_and_json_ready(fitted: dict[str, PolicyCalibration]) -> None:
    assert list(fitted) == list(POLICIES)
    for cal in fitted.values():
        entry = json.loads(json.dumps(cal.to_manifest()))
        assert set(entry) >= {"params", "operating_point", "fit"}
        assert entry["operating_point"]["split"] == "val"


@pytest.mark.parametrize("name", POLICIES)
def test_stored_parameters_reproduce_the_operating_point(
        name: str, fitted: dict[str, PolicyCalibration], val_logits: Logits) -> None:
    entry = json.loads(json.dumps(fitted[name].to_manifest()))  # as the engine reads it
    pol = build_policy(name, 6, {}, entry)
    point = operating_point(replay(pol, *val_logits, costs=COSTS), 0.8)
    assert point == fitted[name].point


@pytest.mark.parametrize("name", POLICIES)
def test_default_operating_points_are_guarded(name: str,
                                              fitted: dict[str, PolicyCalibration]) -> None:
    assert fitted[name].point.loss_upper <= 0.005 + 1e-12


def test_beem_exits_early_and_keeps_its_promise_on_held_out(
        fitted: dict[str, PolicyCalibration], test_logits: Logits) -> None:
    beem = fitted["beem"]
    variants = beem.variants
    assert beem.point.layer_speedup > 1.1
    assert variants is not None and set(variants) == {"cost", "accuracy"}
    assert beem.fit["tolerance"] == 0.005
    assert len(beem.fit["candidates"]) == 8 + len(BEEM_POWERS)
    powers = [c.get("power", 1.0) for c in beem.fit["candidates"] if c["method"] == "normalised"]
    assert powers == [1.0, *BEEM_POWERS, 1.0]  # BEEM-C: paper weights, then sharper; BEEM-A
    res = replay(build_policy("beem", 6, {}, beem.to_manifest()), *test_logits, costs=COSTS)
    assert res.accuracy_loss() <= 0.005
    for weighting in ("cost", "accuracy"):
        pol = build_policy("beem", 6, {"weighting": weighting}, beem.to_manifest())
        assert pol.params()["thresholds"] == variants[weighting]["thresholds"]


def test_beem_c_weights_come_from_the_measured_costs(
        fitted: dict[str, PolicyCalibration]) -> None:
    variants = fitted["beem"].variants
    assert variants is not None
    cost, power = variants["cost"]["weights"], variants["cost"]["power"]
    assert power == 1.0 or power in BEEM_POWERS
    assert cost == pytest.approx([(c / 6.2) ** power for c in (1.2, 2.2, 3.2, 4.2, 5.2, 6.2)])


def test_sharper_beem_c_candidates_are_served_as_fitted(val_logits: Logits) -> None:
    """Every power candidate is a plain weights + thresholds BEEM: the served policy replays
    the fitted validation point, and its guard holds."""
    data = Split(*val_logits, COSTS)
    for g in BEEM_POWERS:
        fit = fit_sharpened(data, g, CalibrationConfig().beem())
        assert fit.weights == pytest.approx(cost_weights(COSTS.cumulative, g))
        assert fit.power == g and fit.point.loss_upper <= 0.005 + 1e-12
        res = replay(build_policy("beem", 6, {}, {"params": fit.params()}), *val_logits,
                     costs=COSTS)
        assert res.layer_speedup() == pytest.approx(fit.point.layer_speedup)


def test_beem_global_alpha_for_a_target_speedup(val_logits: Logits) -> None:
    cfg = CalibrationConfig(beem_target_speedup=1.8)
    cal = calibrate(Split(*val_logits, COSTS), ["beem"], cfg)["beem"]
    assert cal.fit["target_speedup"] == 1.8 and cal.fit["method"].startswith("global")
    assert 1.8 <= cal.point.layer_speedup < 2.0
    thresholds = cal.params["thresholds"]
    assert thresholds[-1] is None and len(set(thresholds[:-1])) == 1


def test_eenet_records_how_the_budget_was_found(fitted: dict[str, PolicyCalibration]) -> None:
    fit = fitted["eenet"].fit
    assert fit["runs"] and fit["budget"] == fitted["eenet"].params["budget"]
    assert 1.2 / 6.2 < fit["budget"] <= 1.0


def test_a_fixed_eenet_budget_is_met_on_validation(val_logits: Logits) -> None:
    cfg = CalibrationConfig(eenet_budget=0.6, eenet=FAST_EENET)
    cal = calibrate(Split(*val_logits, COSTS), ["eenet"], cfg)["eenet"]
    assert cal.params["budget"] == 0.6
    assert cal.point.cost_fraction == pytest.approx(0.6, abs=0.005)


def test_eenet_budget_below_the_first_exit_is_refused(val_logits: Logits) -> None:
    cfg = CalibrationConfig(eenet_budget=0.1, eenet=FAST_EENET)
    with pytest.raises(PolicyError, match=r"budget=0.1 is below the first exit's cost 0.1935"):
        calibrate(Split(*val_logits, COSTS), ["eenet"], cfg)


@pytest.mark.parametrize(("names", "cfg", "message"), [
    (["beem", "oracle-label"], CalibrationConfig(), r"cannot calibrate \['oracle-label'\]"),
    (None, CalibrationConfig(tolerance=math.nan), "tolerance must be finite"),
    (None, CalibrationConfig(confidence=0.3), r"confidence=0.3 out of range"),
])
def test_bad_requests(names: list[str] | None, cfg: CalibrationConfig, message: str,
                      val_logits: Logits) -> None:
    with pytest.raises(PolicyError, match=message):
        calibrate(Split(*val_logits, COSTS), names, cfg)


def test_non_finite_validation_logits_are_refused(val_logits: Logits) -> None:
    logits = val_logits[0].clone()
    logits[3, 2, 1] = math.inf
    with pytest.raises(PolicyError, match="NaN or inf"):
        calibrate(Split(logits, val_logits[1], COSTS), ["maxprob"])


def test_calibrate_artifact_writes_the_manifest(fake_artifact: Path) -> None:
    cfg = CalibrationConfig(eenet=FAST_EENET)
    manifest = calibrate_artifact(fake_artifact, ["maxprob", "beem"], cfg)
    speed = {n: manifest["policies"][n]["operating_point"]["cost_speedup"]
             for n in ("maxprob", "beem")}
    assert manifest["default_policy"] == max(speed, key=lambda n: (speed[n], n == "beem"))
    on_disk = read_manifest(fake_artifact)  # hashes still verify
    assert set(on_disk["policies"]) == {"maxprob", "beem"}
    assert on_disk["policies"]["beem"]["fit"]["split"] == "val"
    before = on_disk["policies"]["maxprob"]
    calibrate_artifact(fake_artifact, ["static"], cfg)  # others are kept
    again = read_manifest(fake_artifact)
    assert set(again["policies"]) == {"maxprob", "beem", "static"}
    assert again["policies"]["maxprob"] == before


def test_calibrate_artifact_without_beem_keeps_the_default(fake_artifact: Path) -> None:
    assert calibrate_artifact(fake_artifact, ["static"])["default_policy"] == "none"


def _cal(speed: float, upper: float, tol: float = 0.005) -> dict[str, Any]:
    return {"operating_point": {"cost_speedup": speed, "loss_upper": upper},
            "fit": {"tolerance": tol}}


def test_default_is_the_fastest_guarded_policy_and_beem_wins_ties() -> None:
    assert choose_default({"beem": _cal(1.5, 0.004), "maxprob": _cal(1.7, 0.004)}) == "maxprob"
    assert choose_default({"beem": _cal(1.7, 0.004), "maxprob": _cal(1.7, 0.004)}) == "beem"
    # a point whose bound broke its tolerance (e.g. a speed target) is not a default
    assert choose_default({"beem": _cal(2.5, 0.02), "eenet": _cal(1.2, 0.001)}) == "eenet"
    assert choose_default({"static": _cal(3.0, 0.0), "none": _cal(1.0, 0.0)}) is None
