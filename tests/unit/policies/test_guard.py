"""Exact binomial bounds (Clopper-Pearson), the paired loss guards (exact and score), against first
principles and, for the score bound, by simulated coverage."""

from __future__ import annotations

import math

import pytest
import torch

from policies import PolicyError
from policies.guard import (
    binom_cdf,
    cp_lower,
    cp_upper,
    cp_upper_at_most,
    current_guard,
    exact_loss_upper,
    exact_loss_within,
    loss_upper,
    loss_within,
    paired_counts,
    score_loss_upper,
    score_loss_within,
    use_guard,
)


def _cdf(x: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(x + 1))


@pytest.mark.parametrize(("x", "n", "p"), [(0, 10, 0.1), (3, 20, 0.3), (7, 50, 0.05),
                                           (49, 50, 0.99), (5, 5, 0.5), (-1, 4, 0.5)])
def test_binom_cdf_matches_the_sum_of_the_pmf(x: int, n: int, p: float) -> None:
    expected = 0.0 if x < 0 else _cdf(min(x, n), n, p)
    assert float(binom_cdf(x, n, p)) == pytest.approx(expected, abs=1e-12)


def test_binom_cdf_is_vectorised_and_exact_at_the_edges() -> None:
    x = torch.tensor([0.0, 2.0, 10.0])
    got = binom_cdf(x, torch.tensor([10.0, 10.0, 10.0]), torch.tensor([0.0, 1.0, 0.3]))
    assert got.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("n", [1, 10, 300])
@pytest.mark.parametrize("confidence", [0.8, 0.95])
def test_zero_successes_has_the_closed_form(n: int, confidence: float) -> None:
    assert float(cp_upper(0, n, confidence)) == pytest.approx(1 - (1 - confidence) ** (1 / n),
                                                              rel=1e-9)


@pytest.mark.parametrize(("x", "n"), [(1, 10), (5, 50), (30, 400)])
def test_upper_bound_solves_the_tail_equation(x: int, n: int) -> None:
    u = float(cp_upper(x, n, 0.9))
    assert x / n < u < 1
    assert _cdf(x, n, u) == pytest.approx(0.1, abs=1e-9)


def test_degenerate_counts_give_one() -> None:
    assert cp_upper(torch.tensor([0.0, 4.0]), torch.tensor([0.0, 4.0]), 0.9).tolist() == [1, 1]


def test_at_most_agrees_with_the_bisection() -> None:
    g = torch.Generator().manual_seed(0)
    n = torch.randint(1, 200, (300,), generator=g).double()
    x = (torch.rand(300, generator=g, dtype=torch.float64) * n * 0.3).floor()
    bound = torch.rand(300, generator=g, dtype=torch.float64) * 0.4
    upper = cp_upper(x, n, 0.85)
    far = (upper - bound).abs() > 1e-9
    assert torch.equal(cp_upper_at_most(x, n, bound, 0.85)[far], (upper <= bound)[far])
    assert bool(cp_upper_at_most(torch.tensor(3.0), torch.tensor(4.0), 1.0, 0.9))


def test_paired_counts_and_loss_bound() -> None:
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    final = torch.tensor([1, 1, 0, 0, 0, 1])  # right on rows 0, 1, 3, 4
    pred = torch.tensor([0, 1, 1, 0, 1, 1])  # loses rows 0 and 4, gains row 2
    c = paired_counts(pred, final, labels)
    assert (c.lost, c.gained, c.n) == (2, 1, 6)
    each = 0.95  # Bonferroni: both bounds at (1 + 0.9) / 2
    assert c.upper(0.9) == pytest.approx(float(cp_upper(2, 6, each)) -  # the default: exact
                                         float(cp_lower(1, 6, each)))
    with use_guard("score"):
        assert c.upper(0.9) == pytest.approx(float(score_loss_upper(2, 1, 6, 0.9)))
    assert c.upper(0.9) > (2 - 1) / 6  # the bound lies above the point estimate
    with pytest.raises(PolicyError, match="shapes differ"):
        paired_counts(pred[:3], final, labels)


def test_only_rows_that_left_early_can_be_lost() -> None:
    for method in ("exact", "score"):
        with use_guard(method):
            assert float(loss_upper(0, 0, 1000, 0.9, early=0)) == 0.0  # full depth: no loss
    small = float(exact_loss_upper(0, 0, 1000, 0.9, early=100))
    assert small == pytest.approx(100 * float(cp_upper(0, 100, 0.95)) / 1000)
    assert small < float(exact_loss_upper(0, 0, 1000, 0.9))


def test_loss_within_is_the_bound_against_the_tolerance() -> None:
    lost = torch.tensor([0.0, 2.0, 2.0, 6.0, 10.0])
    gained = torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0])
    n = torch.tensor([1000.0, 1000.0, 1000.0, 1000.0, 0.0])
    upper = exact_loss_upper(lost, gained, n, 0.8)
    within = exact_loss_within(lost, gained, n, 0.005, 0.8)
    assert within.tolist() == [True, False, True, False, True]  # gains offset losses
    assert within[:4].tolist() == (upper[:4] <= 0.005).tolist()
    upper = score_loss_upper(lost, gained, n, 0.8)
    within = score_loss_within(lost, gained, n, 0.005, 0.8)
    assert within.tolist() == [True, True, True, False, True]  # 2 lost of 1000: 0.45 pt bound
    assert within[:4].tolist() == (upper[:4] <= 0.005).tolist()


def test_gains_are_credited_at_their_lower_bound() -> None:
    """11 lost / 11 gained among 384 early rows: a point loss of 0, but both counts are noisy."""
    assert float(exact_loss_upper(11, 11, 1057, 0.8, early=384)) > 0.005
    assert float(exact_loss_upper(11, 11, 1057, 0.8, early=384)) < \
        float(exact_loss_upper(11, 0, 1057, 0.8, early=384))
    # the joint score bound spends the margin once: sqrt(22) rows of noise, not two tails
    joint = float(score_loss_upper(11, 11, 1057, 0.8))
    assert 0.0 < joint < float(exact_loss_upper(11, 11, 1057, 0.8, early=384))
    assert joint < float(score_loss_upper(11, 0, 1057, 0.8))


@pytest.mark.parametrize(("x", "n"), [(1, 10), (5, 50), (30, 400)])
def test_lower_bound_solves_the_tail_equation(x: int, n: int) -> None:
    lo = float(cp_lower(x, n, 0.9))
    assert 0 < lo < x / n
    assert 1 - _cdf(x - 1, n, lo) == pytest.approx(0.1, abs=1e-9)
    assert float(cp_lower(0, n, 0.9)) == 0.0
    assert float(cp_lower(n, n, 0.9)) == pytest.approx(0.1 ** (1 / n))


@pytest.mark.parametrize("confidence", [0.2, 1.0, math.nan])
def test_confidence_must_be_a_probability_above_one_half(confidence: float) -> None:
    with pytest.raises(PolicyError, match="confidence"):
        cp_upper(1, 10, confidence)


@pytest.mark.parametrize(("n", "lost_rate", "loss"), [(250, 0.005, 0.003), (250, 0.01, 0.01),
                                                      (528, 0.002, 0.0), (1057, 0.04, 0.003)])
def test_score_bound_covers_the_true_loss_at_its_confidence(n: int, lost_rate: float,
                                                            loss: float) -> None:
    """Simulated coverage where the uncorrected score bound fell short (0.67-0.79 of 0.8)."""
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([lost_rate, lost_rate - loss, 1 - 2 * lost_rate + loss])
    draws = torch.multinomial(probs, 3000 * n, replacement=True, generator=g).view(3000, n)
    lost, gained = (draws == 0).sum(1).double(), (draws == 1).sum(1).double()  # (3000,)
    upper = score_loss_upper(lost, gained, float(n), 0.8)
    assert float((upper >= loss).double().mean()) >= 0.785  # 0.8 less ~2 Monte Carlo s.e.
    point = (lost - gained) / n
    assert bool((upper > point).all())


def test_score_bound_is_tighter_than_the_exact_one_and_rises_with_confidence() -> None:
    lost, gained = torch.tensor([15.0, 5.0, 30.0]), torch.tensor([12.0, 0.0, 20.0])
    score = score_loss_upper(lost, gained, 1057.0, 0.8)
    assert bool((score < exact_loss_upper(lost, gained, 1057.0, 0.8)).all())
    assert bool((score < score_loss_upper(lost, gained, 1057.0, 0.95)).all())


def test_use_guard_switches_the_method_and_names_bad_ones() -> None:
    assert current_guard() == "exact"
    assert float(loss_upper(5, 0, 1057, 0.8)) == float(exact_loss_upper(5, 0, 1057, 0.8))
    assert not bool(loss_within(torch.tensor(2.0), torch.tensor(0.0), torch.tensor(1000.0),
                                0.005, 0.8))
    with use_guard("score"):
        assert current_guard() == "score"
        assert bool(loss_within(torch.tensor(2.0), torch.tensor(0.0), torch.tensor(1000.0),
                                0.005, 0.8))
    assert current_guard() == "exact"
    with pytest.raises(PolicyError, match="guard"), use_guard("bayes"):
        pass
