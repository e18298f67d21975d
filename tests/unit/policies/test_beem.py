"""BEEM's decision rule (algorithms.md §A.2), its weightings (§A.3) and parameter resolution."""

from __future__ import annotations

import math

import pytest
import torch

from policies import PolicyError, PolicyState, build_policy
from policies.beem import BeemPolicy, BeemState, accuracy_weights, cost_weights
from policies.replay import replay

# three exits: argmax 0, 0, 1 with known confidences
LOGITS = torch.tensor([[[math.log(0.8), math.log(0.2)],
                        [math.log(0.9), math.log(0.1)],
                        [math.log(0.3), math.log(0.7)]]])  # (1, 3, 2)
W = [0.1, 0.2, 0.3]


def _scores(reset: str) -> list[float]:
    pol = BeemPolicy(3, W, [None] * 3, reset)
    state: PolicyState = pol.init_state(1)
    out = []
    for k in range(1, 4):
        d = pol.step(state, k, LOGITS[:, k - 1])
        out.append(float(d.score[0]))
        state = d.state
    return out


def test_weighted_reset_accumulates_the_agreeing_streak() -> None:
    s = _scores("weighted")
    assert s == pytest.approx([0.1 * 0.8, 0.1 * 0.8 + 0.2 * 0.9, 0.3 * 0.7])


def test_zero_reset_drops_the_first_exit_of_a_streak() -> None:
    assert _scores("zero") == pytest.approx([0.0, 0.2 * 0.9, 0.0])


def test_exit_fires_when_the_streak_reaches_alpha() -> None:
    alpha = 0.1 * 0.8 + 0.2 * 0.9 - 1e-9  # reached at exit 2, not at exit 1
    res = replay(BeemPolicy(3, W, [alpha] * 3), LOGITS)
    assert res.exit_layer.tolist() == [2] and res.prediction.tolist() == [0]
    res = replay(BeemPolicy(3, W, [alpha + 1e-6] * 3), LOGITS)
    assert res.exit_layer.tolist() == [3] and res.prediction.tolist() == [1]


def test_a_null_threshold_never_fires_and_per_exit_thresholds_apply() -> None:
    res = replay(BeemPolicy(3, W, [None, 0.0, None]), LOGITS)
    assert res.exit_layer.tolist() == [2]


def test_state_after_a_disagreement_restarts() -> None:
    pol = BeemPolicy(3, W, [None] * 3)
    state = BeemState(torch.tensor([1]), torch.tensor([5.0], dtype=torch.float64))
    d = pol.step(state, 2, LOGITS[:, 1])  # argmax 0 != previous 1
    assert float(d.score[0]) == pytest.approx(0.2 * 0.9)
    assert isinstance(d.state, BeemState) and d.state.prev_pred.tolist() == [0]


def test_cost_weights_are_cumulative_cost_over_full_cost() -> None:
    assert cost_weights([1, 2, 3, 4]) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cost_weights([2.0, 3.0, 8.0]) == pytest.approx([0.25, 0.375, 1.0])
    with pytest.raises(PolicyError, match="must be > 0"):
        cost_weights([0.0, 0.0])
    assert cost_weights([1, 2, 4], power=2) == pytest.approx([1 / 16, 1 / 4, 1.0])
    with pytest.raises(PolicyError, match="power"):
        cost_weights([1, 2], power=-1)


def test_accuracy_weights_keep_the_cost_weight_sum() -> None:
    w = accuracy_weights([0.6, 0.8, 0.9, 0.9])
    assert sum(w) == pytest.approx(sum(cost_weights([1, 2, 3, 4])))
    assert w[0] < w[1] < w[2] == w[3]
    assert accuracy_weights([0.6, 0.8], normalise=False) == [0.6, 0.8]
    with pytest.raises(PolicyError, match=r"accuracies\[1\]"):
        accuracy_weights([0.5, 1.5])


CAL = {"params": {"weighting": "accuracy", "weights": [0.5, 1.0, 1.5], "reset": "zero",
                  "thresholds": [0.4, 0.9, None]},
       "variants": {"accuracy": {"weights": [0.5, 1.0, 1.5], "thresholds": [0.4, 0.9, None]},
                    "cost": {"weights": [1 / 3, 2 / 3, 1.0], "thresholds": [0.7, None, None]}}}


def test_build_uses_the_calibration() -> None:
    pol = build_policy("beem", 3, {}, CAL)
    assert isinstance(pol, BeemPolicy)
    assert pol.params() == {"weighting": "accuracy", "weights": [0.5, 1.0, 1.5],
                            "reset": "zero", "thresholds": [0.4, 0.9, None]}


def test_a_requested_weighting_takes_its_calibrated_variant() -> None:
    pol = build_policy("beem", 3, {"weighting": "cost"}, CAL)
    assert pol.params()["weights"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert pol.params()["thresholds"] == [0.7, None, None]
    pol = build_policy("beem", 3, {"weighting": "cost", "threshold": 0.25}, CAL)
    assert pol.params()["thresholds"] == [0.25] * 3


def test_uncalibrated_defaults_are_beem_c_layer_weights() -> None:
    pol = build_policy("beem", 4)
    assert pol.params()["weights"] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert pol.params()["weighting"] == "cost" and pol.params()["reset"] == "weighted"


def test_explicit_weights_are_custom() -> None:
    pol = build_policy("beem", 2, {"weights": [1, 2], "threshold": 1.5}, CAL)
    assert pol.params()["weighting"] == "custom"
    assert pol.params()["thresholds"] == [1.5, 1.5]


@pytest.mark.parametrize(("params", "message"), [
    ({"threshold": math.nan}, "threshold must be finite"),
    ({"threshold": -0.1}, r"threshold=-0.1 out of range"),
    ({"thresholds": [0.1, "x", 0.2]}, r"thresholds\[1\] must be a number"),
    ({"thresholds": [0.1]}, "needs 3 values"),
    ({"weights": [1.0, 2.0]}, "weights needs 3 values"),
    ({"weights": [1.0, math.inf, 1.0]}, r"weights\[1\] must be finite"),
    ({"reset": "half"}, "reset='half' unknown"),
    ({"weighting": "speed"}, "weighting='speed' unknown"),
    ({"weighting": "accuracy"}, "needs calibrated weights"),
    ({"alpha": 1.0}, r"unknown parameter\(s\) \['alpha'\]"),
])
def test_bad_parameters_name_the_value(params: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build_policy("beem", 3, params)
