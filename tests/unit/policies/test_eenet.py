"""EENet online rule (algorithms.md §B.2-B.6) and its fitting (§B.3-B.5, §B.12 fixes)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from policies import PolicyError, build_policy
from policies.costs import custom_costs, layer_costs
from policies.eenet import EENetPolicy, EENetState
from policies.fit.eenet_fit import (
    EENetFitConfig,
    fit_eenet,
    fit_offset,
    hard_exits,
    quantile_thresholds,
)
from policies.replay import replay

Logits = tuple[torch.Tensor, torch.Tensor]
A = [[0.5, -0.5], [0.0, 1.0], [0.0, 0.0]]
B = [[1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]


def test_score_is_the_linear_head_over_probabilities_and_earlier_scores() -> None:
    pol = EENetPolicy(3, A, B, [10.0, 10.0, None])
    logits = torch.tensor([[math.log(0.75), math.log(0.25)]])
    p, m = torch.tensor([0.75, 0.25]), 0.75
    e = 1 + float((p * p.log()).sum()) / math.log(2)
    d1 = pol.step(pol.init_state(1), 1, logits)
    q1 = 0.5 * 0.75 - 0.5 * 0.25 + 1.0 * m
    assert float(d1.score[0]) == pytest.approx(q1)
    d2 = pol.step(d1.state, 2, logits)
    q2 = 1.0 * 0.25 + 1.0 * e + 2.0 * q1
    assert float(d2.score[0]) == pytest.approx(q2)
    assert isinstance(d2.state, EENetState)
    assert d2.state.scores[0].tolist() == pytest.approx([q1, q2, 0.0])


def test_threshold_and_forced_last_exit() -> None:
    pol = EENetPolicy(3, A, B, [0.6, 100.0, None])
    logits = torch.tensor([[[3.0, 0.0]] * 3, [[0.0, 0.1]] * 3])  # confident row, unsure row
    res = replay(pol, logits)
    assert res.exit_layer.tolist() == [1, 3]
    d = pol.step(pol.init_state(2), 3, logits[:, 2])  # the last exit fires even for q < 0
    assert d.exit_mask.tolist() == [True, True]


def test_build_needs_fitted_heads_and_applies_the_offset() -> None:
    with pytest.raises(PolicyError, match=r"no fitted \['a', 'b', 'thresholds'\]"):
        build_policy("eenet", 3)
    cal = {"params": {"a": A, "b": B, "thresholds": [0.6, 1.0, None], "budget": 0.5}}
    pol = build_policy("eenet", 3, {"offset": 0.5}, cal)
    assert pol.params()["thresholds"] == [1.1, 1.5, None]
    assert pol.params()["budget"] == 0.5


@pytest.mark.parametrize(("params", "message"), [
    ({"a": A[:2]}, "a needs 3 lists"),
    ({"b": [[1.0], [0.0, 1.0, 2.0], [0.0] * 4]}, r"b\[0\] needs 2 values"),
    ({"thresholds": [math.nan, 1.0, None]}, r"thresholds\[0\] must be finite"),
    ({"offset": math.inf}, "offset must be finite"),
    ({"budget": 1.5}, r"budget=1.5 out of range"),
])
def test_bad_parameters_are_named(params: dict[str, object], message: str) -> None:
    base = {"a": A, "b": B, "thresholds": [0.6, 1.0, None]}
    with pytest.raises(PolicyError, match=message):
        build_policy("eenet", 3, {**base, **params})


def test_class_count_must_match_the_fit() -> None:
    pol = EENetPolicy(3, A, B, [0.6, 1.0, None])
    with pytest.raises(PolicyError, match="fitted for 2 classes, logits have 3"):
        pol.step(pol.init_state(1), 1, torch.zeros(1, 3))


def test_quantile_thresholds_follow_the_shares() -> None:
    q = torch.tensor([[0.9, 0.0, 0.0], [0.8, 0.7, 0.0], [0.1, 0.6, 0.0], [0.2, 0.1, 0.0]],
                     dtype=torch.float64)
    t = quantile_thresholds(q, torch.tensor([0.5, 0.25, 0.25]))
    assert t == [0.8, 0.6, None]  # exit 1 takes the 2 best rows, exit 2 the best remaining one
    assert hard_exits(q, t, 0.0).tolist() == [1, 1, 2, 3]
    assert quantile_thresholds(q, torch.tensor([0.0, 0.0, 1.0]))[:2] == [None, None]


def test_offset_hits_a_reachable_budget_exactly() -> None:
    q = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.1, 0.0], [0.2, 0.0]], dtype=torch.float64)
    cost = torch.tensor([0.5, 1.0], dtype=torch.float64)
    for budget, exits in [(0.625, [1, 1, 2, 1]), (0.75, [1, 1, 2, 2]), (1.0, [2, 2, 2, 2]),
                          (0.5, [1, 1, 1, 1])]:
        off = fit_offset(q, [0.0, None], cost, budget)
        assert hard_exits(q, [0.0, None], off).tolist() == exits
        assert all(abs(float(g) - off) > 1e-6 for g in q[:, 0])  # never on a tie


def test_fit_realises_the_budget_on_validation_and_held_out(
        val_logits: Logits, test_logits: Logits) -> None:
    cfg = EENetFitConfig(budget=0.5, epochs=80, restarts=1)
    fit = fit_eenet(*val_logits, layer_costs(6), cfg)
    assert fit.val_cost == pytest.approx(0.5, abs=0.005)
    assert len(fit.shares) == 6 and sum(fit.shares) == pytest.approx(1.0)
    res = replay(fit.policy, *test_logits)
    realised = res.mean_cost() / res.costs.full
    assert abs(realised / 0.5 - 1) <= 0.03  # the issue's +-3 % on held-out data
    assert res.exit_layer.max() <= 6 and res.exit_layer.min() >= 1


def test_fit_is_deterministic(logits_factory: Callable[..., Logits]) -> None:
    logits, labels = logits_factory(200, 3, 3, seed=5)
    cfg = EENetFitConfig(budget=0.7, epochs=20, restarts=1)
    a = fit_eenet(logits, labels, layer_costs(3), cfg)
    b = fit_eenet(logits, labels, layer_costs(3), cfg)
    assert a.params() == b.params()


@pytest.mark.parametrize(("budget", "message"), [
    (0.1, r"budget=0.1 is below the first exit's cost 0.2500"),
    (1.2, r"budget=1.2 is above the full cost"),
    (math.nan, "budget must be finite"),
])
def test_budget_outside_the_reachable_range(budget: float, message: str) -> None:
    logits, labels = torch.zeros(4, 4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(PolicyError, match=message):
        fit_eenet(logits, labels, layer_costs(4), EENetFitConfig(budget=budget))


def test_measured_costs_set_the_first_exit_floor() -> None:
    costs = custom_costs([4.0, 5.0, 8.0])
    with pytest.raises(PolicyError, match="below the first exit's cost 0.5000"):
        fit_eenet(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long), costs,
                  EENetFitConfig(budget=0.45))


def test_logits_and_labels_must_match() -> None:
    with pytest.raises(PolicyError, match="do not match"):
        fit_eenet(torch.zeros(4, 3, 2), torch.zeros(5, dtype=torch.long), layer_costs(3))
