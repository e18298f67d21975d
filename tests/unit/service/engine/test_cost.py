"""StepCost: one step-time estimate per batch-size bucket, high when unsure."""

from __future__ import annotations

import pytest

from service.engine.cost import StepCost, bucket_of


def test_buckets_are_rows_rounded_up_to_a_power_of_two() -> None:
    assert [bucket_of(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [0, 1, 2, 2, 3, 3, 4, 4, 5]


def test_the_seed_answers_until_a_step_is_measured() -> None:
    cost = StepCost(0.004)
    assert cost.estimate(1) == cost.estimate(16) == 0.004


def test_the_estimate_follows_the_batch_size_not_the_overall_average() -> None:
    cost = StepCost(0.004, alpha=0.5, spread=0.0)
    for _ in range(6):
        cost.update(0.001, rows=1)
        cost.update(0.008, rows=8)
    assert cost.estimate(1) == pytest.approx(0.001)
    assert cost.estimate(8) == pytest.approx(0.008)
    assert 0.001 < cost.seconds < 0.008  # the old single average fits neither size
    assert cost.estimate(16) == pytest.approx(0.016)  # unmeasured: linear from 8 rows (high)
    assert cost.estimate(2) == pytest.approx(0.002)  # unmeasured: linear from 1 row
    assert cost.estimate(6) == pytest.approx(0.008)  # 5-8 bucket, measured at 8 rows


def test_a_noisy_size_gets_a_higher_estimate_than_a_steady_one() -> None:
    steady, noisy = StepCost(0.01, spread=2.0), StepCost(0.01, spread=2.0)
    for i in range(20):
        steady.update(0.010, rows=4)
        noisy.update(0.005 if i % 2 else 0.015, rows=4)
    assert steady.estimate(4) == pytest.approx(0.010)
    assert noisy.estimate(4) > 0.015  # mean plus two mean deviations


def test_a_step_without_rows_moves_only_the_overall_average() -> None:
    cost = StepCost(0.010, alpha=0.25)
    cost.update(0.020)
    assert cost.seconds == pytest.approx(0.020) and cost.buckets == {}
