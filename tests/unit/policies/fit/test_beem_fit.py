"""BEEM thresholds (algorithms.md §A.4): support floor, guard, tolerance, global alpha."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from policies import PolicyError, build_policy
from policies.beem import cost_weights
from policies.costs import layer_costs
from policies.fit.beem_fit import (
    SUPPORT_GRID,
    BeemFitConfig,
    beem_trace,
    best_fit,
    choose_min_support,
    fit_global,
    fit_normalised,
    fit_per_exit,
    per_exit_thresholds,
    streak_scale,
)
from policies.replay import replay

Logits = tuple[torch.Tensor, torch.Tensor]
W6 = cost_weights(range(1, 7))


def _two_exit_case(n_top: int, lost: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n_top` rows score high at exit 1, `lost` of them wrong there but right at the end;
    the other 200 rows score low and are wrong at exit 1."""
    n = n_top + 200
    scores = torch.cat([torch.linspace(2.0, 1.0, n_top), torch.zeros(200)]).double()
    scores = torch.stack([scores, torch.zeros(n, dtype=torch.float64)], 1)  # (N, 2)
    labels = torch.zeros(n, dtype=torch.long)
    preds = torch.zeros(n, 2, dtype=torch.long)
    preds[n_top - lost:, 0] = 1  # the last `lost` top rows and every low row are wrong at exit 1
    return scores, preds, labels


def test_the_most_permissive_passing_threshold_is_taken() -> None:
    scores, preds, labels = _two_exit_case(300, 0)
    rec = per_exit_thresholds(scores, preds, labels, BeemFitConfig(tolerance=0.02))[0]
    assert rec.support == 300 and rec.lost == 0
    assert rec.threshold is not None and 0.0 < rec.threshold < 1.0  # between the two groups


def test_support_floor_blocks_small_subsets() -> None:
    scores, preds, labels = _two_exit_case(20, 0)
    cfg = BeemFitConfig(tolerance=0.08, confidence=0.5, min_support=30)
    assert per_exit_thresholds(scores, preds, labels, cfg)[0].threshold is None
    loose = per_exit_thresholds(scores, preds, labels, replace(cfg, min_support=20))[0]
    assert loose.threshold is not None and loose.support == 20


def test_guard_rejects_what_the_point_estimate_accepts() -> None:
    scores, preds, labels = _two_exit_case(40, 1)  # the top 40 lose 1 row: 2.5 % <= 8 %
    weak = BeemFitConfig(tolerance=0.08, confidence=0.5, min_support=1)  # 1 of 40: <= 6.6 %
    assert per_exit_thresholds(scores, preds, labels, weak)[0].support == 40
    guarded = replace(weak, confidence=0.9)  # upper bounds: 1 of 40 ~11.3 %, 0 of 39 ~7.4 %
    assert per_exit_thresholds(scores, preds, labels, guarded)[0].support == 39


def test_cumulative_pooling_spends_earlier_slack() -> None:
    """Exit 1: 400 rows, none lost, 3 gained (slack). Exit 2: 40 rows, 1 lost. Alone, exit 2's
    subset fails the guard; pooled with exit 1's rows it passes."""
    n = 400 + 40 + 100
    scores = torch.zeros(n, 3, dtype=torch.float64)
    scores[:400, 0] = 1.0
    scores[400:440, 1] = 1.0
    preds = torch.zeros(n, 3, dtype=torch.long)
    labels = torch.zeros(n, dtype=torch.long)
    preds[400:, 0] = 1  # exit 1 is wrong outside its 400 rows (and those never leave there)
    preds[:3, 2] = 1  # the last exit errs on 3 of exit 1's rows: exit 1 gains them
    preds[400, 1] = 1  # exit 2 loses one of its 40 rows
    preds[440:, 1] = 1
    cfg = BeemFitConfig(tolerance=0.01, confidence=0.8, min_support=30)
    alone = per_exit_thresholds(scores, preds, labels, cfg)
    pooled = per_exit_thresholds(scores, preds, labels, replace(cfg, pooling="cumulative"))
    assert alone[0].support == pooled[0].support == 400 and alone[0].gained == 3
    assert alone[1].threshold is None and pooled[1].support == 40 and pooled[1].lost == 1


def test_more_tolerance_lets_more_rows_leave(val_logits: Logits) -> None:
    speedups = [fit_per_exit(*val_logits, layer_costs(6), W6, "cost",
                             BeemFitConfig(tolerance=t)).point.layer_speedup
                for t in (0.0, 0.01, 0.05)]
    assert speedups[0] <= speedups[1] <= speedups[2] and speedups[0] < speedups[2]


def test_per_exit_fit_keeps_its_promise_on_held_out_data(val_logits: Logits,
                                                         test_logits: Logits) -> None:
    cfg = BeemFitConfig()
    fit = fit_per_exit(*val_logits, layer_costs(6), W6, "cost", cfg)
    assert fit.point.loss_upper <= cfg.tolerance
    assert fit.thresholds[-1] is None and fit.point.layer_speedup > 1.05
    res = replay(build_policy("beem", 6, {}, {"params": fit.params()}), *test_logits)
    assert res.accuracy_loss() <= cfg.tolerance
    assert [e.support for e in fit.exits][-1] == round(fit.point.exit_shares[-1] * 1000)


def test_paper_reference_with_a_point_estimate_overfits(val_logits: Logits,
                                                        test_logits: Logits) -> None:
    """The plain §A.4 rule (error <= p_L, no guard) loses more on held-out data than ours."""
    plain = BeemFitConfig(reference="overall", confidence=0.5, min_support=1)
    ours = BeemFitConfig()
    losses = []
    for cfg in (plain, ours):
        fit = fit_per_exit(*val_logits, layer_costs(6), W6, "cost", cfg)
        res = replay(build_policy("beem", 6, {}, {"params": fit.params()}), *test_logits)
        losses.append(res.accuracy_loss())
    assert losses[0] > 0.005 >= losses[1]


def test_global_alpha_for_a_target_loss_or_speedup(val_logits: Logits) -> None:
    cfg = BeemFitConfig()
    by_loss = fit_global(*val_logits, layer_costs(6), W6, "cost", cfg)
    assert by_loss.method == "global" and by_loss.point.loss_upper <= cfg.tolerance
    assert by_loss.thresholds == [by_loss.alpha] * 5 + [None]
    by_speed = fit_global(*val_logits, layer_costs(6), W6, "cost", cfg, target_speedup=1.5)
    assert by_speed.point.layer_speedup >= 1.5
    assert by_speed.point.layer_speedup < 1.6  # the slowest (most accurate) that reaches it
    with pytest.raises(PolicyError, match=r"target_speedup=7 out of range"):
        fit_global(*val_logits, layer_costs(6), W6, "cost", cfg, target_speedup=7)


def test_best_fit_prefers_the_fastest_guarded(val_logits: Logits) -> None:
    cfg = BeemFitConfig()
    fits = [fit_per_exit(*val_logits, layer_costs(6), W6, "cost", cfg),
            fit_global(*val_logits, layer_costs(6), W6, "cost", cfg),
            fit_per_exit(*val_logits, layer_costs(6), W6, "cost", replace(cfg, tolerance=0.2))]
    chosen = best_fit(fits, cfg.tolerance)
    assert chosen in fits[:2]
    assert chosen.point.cost_speedup == max(f.point.cost_speedup for f in fits[:2])


@pytest.mark.parametrize(("cfg", "message"), [
    (BeemFitConfig(tolerance=-0.1), r"tolerance=-0.1 out of range"),
    (BeemFitConfig(confidence=1.0), "confidence=1.0 out of range"),
    (BeemFitConfig(min_support=0), "min_support=0 out of range"),
    (BeemFitConfig(reference="test"), "reference='test' unknown"),
    (BeemFitConfig(pooling="all"), "pooling='all' unknown"),
])
def test_bad_configuration(cfg: BeemFitConfig, message: str, val_logits: Logits) -> None:
    with pytest.raises(PolicyError, match=message):
        fit_per_exit(*val_logits, layer_costs(6), W6, "cost", cfg)


def test_weights_must_match_the_exits(val_logits: Logits) -> None:
    with pytest.raises(PolicyError, match="3 weights for 6 exits"):
        fit_per_exit(*val_logits, layer_costs(6), [1.0, 1.0, 1.0], "custom", BeemFitConfig())


def test_normalised_alpha_ties_the_thresholds_to_the_streak_scale(val_logits: Logits,
                                                                   test_logits: Logits) -> None:
    logits, labels = val_logits
    costs = layer_costs(6)
    fit = fit_normalised(logits, labels, costs, W6, "cost", BeemFitConfig(confidence=0.8))
    assert fit.method == "normalised" and fit.alpha is not None and 0 < fit.alpha <= 1
    scale = streak_scale(W6)
    assert scale[-1] == pytest.approx(sum(W6))
    assert fit.thresholds[-1] is None
    assert fit.thresholds[:-1] == pytest.approx([fit.alpha * w for w in scale[:-1]])
    # alpha is settled between fitted rows: none sits within rounding of it (ONNX parity)
    norm = beem_trace(logits, W6, "weighted").scores[:, :-1] / torch.tensor(scale[:-1])
    assert (norm - fit.alpha).abs().min() > 1e-6
    assert fit.point.loss_upper <= 0.005 and fit.point.layer_speedup > 1.0
    # the served policy (thresholds list, no special code) reproduces the fitted point
    pol = build_policy("beem", 6, {}, {"params": fit.params()})
    res = replay(pol, logits, labels, costs)
    assert res.layer_speedup() == pytest.approx(fit.point.layer_speedup)
    strict = fit_normalised(logits, labels, costs, W6, "cost",
                            BeemFitConfig(tolerance=0.0005, confidence=0.8))
    assert strict.point.layer_speedup <= fit.point.layer_speedup  # less room, fewer exits


def test_support_floor_is_chosen_by_held_out_halves(val_logits: Logits) -> None:
    logits, labels = val_logits
    cfg = BeemFitConfig(confidence=0.8)
    choice = choose_min_support(logits, labels, layer_costs(6), W6, cfg)
    assert [t["min_support"] for t in choice.trials] == list(SUPPORT_GRID)
    ok = [t for t in choice.trials if t["held_out_loss"] <= 0.005]
    picked = next(t for t in choice.trials if t["min_support"] == choice.min_support)
    if ok:
        assert picked["held_out_cost_speedup"] == max(t["held_out_cost_speedup"] for t in ok)
    else:
        assert choice.min_support == SUPPORT_GRID[-1]
    # a floor above every subset the guard accepts leaves exits 1..K-1 closed: no speed-up
    none = choose_min_support(logits, labels, layer_costs(6), W6, cfg, grid=(10**6,))
    assert none.trials[0]["held_out_cost_speedup"] == pytest.approx(1.0)
