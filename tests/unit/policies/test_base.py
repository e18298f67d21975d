"""The policy contract: registry, last-exit rule, state filter/concatenate, bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from policies import REGISTRY, PolicyError, build_policy, enforce_last_exit
from policies.base import Decision, check_number, check_thresholds
from policies.beem import BeemState

ONLINE = ["beem", "eenet", "maxprob", "entropy", "patience", "static", "none"]


def _eenet_params(k: int, c: int = 2) -> dict[str, object]:
    return {"a": [[0.0] * c for _ in range(k)], "b": [[1.0] + [0.0] * j for j in range(1, k + 1)],
            "thresholds": [0.9] * (k - 1) + [None]}


def test_every_online_policy_is_registered() -> None:
    assert sorted(REGISTRY) == sorted(ONLINE)


def test_unknown_policy_names_the_value() -> None:
    with pytest.raises(PolicyError, match=r"unknown policy 'bem'.*beem"):
        build_policy("bem", 3)


@pytest.mark.parametrize("name", ONLINE)
def test_last_exit_always_fires_under_the_engine_rule(name: str) -> None:
    k = 3
    params = _eenet_params(k) if name == "eenet" else \
        {"threshold": 1.0} if name in ("maxprob", "entropy") else \
        {"patience": k} if name == "patience" else {}
    pol = build_policy(name, k, params)
    logits = torch.tensor([[0.0, 0.0], [0.1, -0.1]])  # unconfident rows: nobody exits early
    state = pol.init_state(2)
    for step in range(1, k + 1):
        raw = pol.step(state, step, logits)
        d = enforce_last_exit(raw, step, k)
        if step < k:
            assert torch.equal(d.exit_mask, raw.exit_mask)
            assert not bool(d.exit_mask.any())
        else:
            assert bool(d.exit_mask.all())
        state = d.state


def test_enforce_last_exit_leaves_earlier_decisions_alone() -> None:
    d = Decision(torch.tensor([False, True]), torch.tensor([0, 1]), torch.zeros(2),
                 BeemState(torch.zeros(2, dtype=torch.long), torch.zeros(2)))
    assert enforce_last_exit(d, 2, 3) is d
    assert enforce_last_exit(d, 3, 3).exit_mask.tolist() == [True, True]


def test_state_filter_and_concatenate_keep_rows_in_order() -> None:
    s = BeemState(torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    kept = s.filter(torch.tensor([True, False, True, False]))
    assert kept.prev_pred.tolist() == [0, 2] and kept.score.tolist() == [0.0, 2.0]
    both = BeemState.concatenate([kept, s.filter(torch.tensor([False, True, False, True]))])
    assert both.prev_pred.tolist() == [0, 2, 1, 3]
    assert both.score.tolist() == [0.0, 2.0, 1.0, 3.0]


@pytest.mark.parametrize(("logits", "message"), [
    (torch.tensor([[math.nan, 0.0]]), "NaN or inf"),
    (torch.tensor([[math.inf, 0.0]]), "NaN or inf"),
    (torch.zeros(2), r"must be \(B, C\)"),
    (torch.zeros(1, 2, 2), r"must be \(B, C\)"),
    (torch.zeros(1, 0), r"must be \(B, C\) with C >= 1"),
    (torch.zeros(1, 2, dtype=torch.long), "floating point"),
    (torch.zeros(3, 2), "3 rows, state has 1"),
])
@pytest.mark.parametrize("name", ONLINE)
def test_bad_logits_are_policy_errors(name: str, logits: torch.Tensor, message: str) -> None:
    pol = build_policy(name, 2, _eenet_params(2) if name == "eenet" else {})
    with pytest.raises(PolicyError, match=message):
        pol.step(pol.init_state(1), 1, logits)


@pytest.mark.parametrize("k", [0, 4])
def test_exit_number_out_of_range(k: int) -> None:
    pol = build_policy("maxprob", 3)
    with pytest.raises(PolicyError, match=f"exit k={k} out of range 1..3"):
        pol.step(pol.init_state(1), k, torch.zeros(1, 2))


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5", True, None])
def test_check_number_rejects_non_numbers(value: object) -> None:
    with pytest.raises(PolicyError, match="x"):
        check_number("x", value)


def test_check_thresholds_names_the_bad_entry() -> None:
    with pytest.raises(PolicyError, match=r"t\[1\]=1.5 out of range"):
        check_thresholds("t", [0.5, 1.5], 2, 0.0, 1.0)
    with pytest.raises(PolicyError, match="needs 3 values"):
        check_thresholds("t", [0.5], 3)


def test_num_exits_must_be_positive() -> None:
    with pytest.raises(PolicyError, match="num_exits must be >= 1, got 0"):
        build_policy("none", 0)


def test_decide_applies_last_exit_and_budget_in_one_place() -> None:
    from policies.base import decide

    pol = build_policy("maxprob", 3, {"threshold": 0.9})
    logits = torch.tensor([[5.0, 0.0], [0.1, 0.0], [0.2, 0.0]])  # row 0 confident only
    state = pol.init_state(3)
    v = decide(pol, state, 1, logits, 3)
    assert v.exit_mask.tolist() == [True, False, False] and not v.forced.any()
    over = torch.tensor([True, True, False])  # row 0 leaves anyway: not counted as forced
    v = decide(pol, state, 1, logits, 3, over)
    assert v.exit_mask.tolist() == [True, True, False]
    assert v.forced.tolist() == [False, True, False]
    v = decide(pol, state, 3, logits, 3, over)  # the last exit: everyone leaves, none forced
    assert v.exit_mask.all() and not v.forced.any()
