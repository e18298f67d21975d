"""Offline replay, traces and vectorised sweeps agree with the engine-style step loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from policies import ExitPolicy, PolicyError, build_policy
from policies.beem import BeemPolicy
from policies.costs import custom_costs, latency_costs, layer_costs
from policies.entropy import EntropyPolicy
from policies.fit.sweep import (
    candidate_thresholds,
    exits_for,
    fastest_within,
    operating_point,
    sweep_global,
)
from policies.max_softmax import MaxProbPolicy
from policies.patience import PatiencePolicy
from policies.replay import first_firing, replay, trace

Logits = tuple[torch.Tensor, torch.Tensor]


def test_first_firing_forces_the_last_exit() -> None:
    fires = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    assert first_firing(fires).tolist() == [2, 3, 1]


def test_replay_metrics(val_logits: Logits) -> None:
    logits, labels = val_logits
    res = replay(build_policy("static", 6, {"layer": 3}), logits, labels)
    assert res.mean_exit() == 3.0 and res.layer_speedup() == 2.0
    assert res.exit_shares() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    preds = logits.argmax(-1)
    assert res.accuracy() == pytest.approx(float((preds[:, 2] == labels).double().mean()))
    assert res.last_accuracy() == pytest.approx(float((preds[:, 5] == labels).double().mean()))
    assert res.accuracy_loss() == pytest.approx(res.last_accuracy() - res.accuracy())


def test_replay_checks_shapes() -> None:
    with pytest.raises(PolicyError, match="policy built for 3 exits, logits have 4"):
        replay(build_policy("none", 3), torch.zeros(2, 4, 2))
    with pytest.raises(PolicyError, match=r"cached logits must be \(N, K, C\)"):
        replay(build_policy("none", 3), torch.zeros(2, 3))
    with pytest.raises(PolicyError, match="costs for 2 exits"):
        replay(build_policy("none", 3), torch.zeros(2, 3, 2), costs=layer_costs(2))


POLICIES = [
    ("maxprob", lambda k: MaxProbPolicy(k, [None] * k), lambda v: {"threshold": v}),
    ("entropy", lambda k: EntropyPolicy(k, [None] * k), lambda v: {"threshold": v}),
    ("beem", lambda k: BeemPolicy(k, [j / k for j in range(1, k + 1)], [None] * k),
     lambda v: {"threshold": v}),
    ("patience", lambda k: PatiencePolicy(k, k), lambda v: {"patience": int(v)}),
]


@pytest.mark.parametrize(("name", "make", "params"), POLICIES)
def test_sweep_matches_replaying_the_built_policy(
        name: str, make: Callable[[int], ExitPolicy], params: Callable[[float], dict[str, Any]],
        val_logits: Logits) -> None:
    logits, labels = val_logits
    costs = custom_costs([1.0, 2.5, 3.0, 4.0, 5.5, 6.0])
    tr = trace(make(6), logits)
    values = [1.0, 2.0, 3.0] if name == "patience" else candidate_thresholds(tr.scores[:, :-1], 7)
    swept = sweep_global(tr.scores, tr.predictions, labels, costs, values, 0.8)
    for sp in swept:
        assert sp.value is not None
        res = replay(build_policy(name, 6, params(sp.value)), logits, labels, costs)
        direct = operating_point(res, 0.8)
        assert sp.point == direct
        assert torch.equal(exits_for(tr.scores, [sp.value] * 6), res.exit_layer)


def test_candidates_are_thinned_evenly() -> None:
    scores = torch.arange(1000, dtype=torch.float64).reshape(100, 10)
    cands = candidate_thresholds(scores, 11)
    assert cands[0] == 0.0 and cands[-1] == 999.0 and len(cands) == 11
    assert candidate_thresholds(torch.tensor([[1.0, 1.0], [2.0, float("inf")]])) == [1.0, 2.0]


def test_fastest_within_respects_the_guard(val_logits: Logits) -> None:
    logits, labels = val_logits
    tr = trace(MaxProbPolicy(6, [None] * 6), logits)
    pts = sweep_global(tr.scores, tr.predictions, labels, layer_costs(6),
                       [*candidate_thresholds(tr.scores[:, :-1], 64), None], 0.8)
    best = fastest_within(pts, 0.005)
    assert best is not None and best.point.loss_upper <= 0.005
    faster = [p for p in pts if p.point.cost_speedup > best.point.cost_speedup]
    assert faster and all(p.point.loss_upper > 0.005 for p in faster)


def test_latency_costs_are_cumulative_per_sample() -> None:
    lat = {"per_layer_ms": {"1": [1.0, 2.0], "8": [8.0, 8.0]}, "embed_ms": {"8": 4.0},
           "head_ms": {"8": 0.8}, "device": "cpu"}
    costs = latency_costs(lat, 2)
    assert costs.cumulative == pytest.approx(((4 + 8 + 0.8) / 8, (4 + 16 + 1.6) / 8))
    assert costs.unit == "ms" and "batch 8" in costs.source
    assert latency_costs(lat, 2, batch_size=1).cumulative == pytest.approx((1.0, 3.0))
    assert latency_costs(None, 3) == layer_costs(3)
    assert latency_costs({"per_layer_ms": {"8": [1.0]}}, 3) == layer_costs(3)
    with pytest.raises(PolicyError, match=r"no latency measured at batch size 4; have \[1, 8\]"):
        latency_costs(lat, 2, batch_size=4)


@pytest.mark.parametrize("values", [[], [0.0, 1.0], [2.0, 1.0]])
def test_custom_costs_must_be_positive_and_non_decreasing(values: list[float]) -> None:
    with pytest.raises(PolicyError, match="positive and non-decreasing"):
        custom_costs(values)
