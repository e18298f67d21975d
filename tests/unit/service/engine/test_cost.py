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
    cost = StepCost(0.004, alpha=0.5)
    for _ in range(6):
        cost.update(0.001, rows=1)
        cost.update(0.008, rows=8)
    assert cost.estimate(1) == pytest.approx(0.001)
    assert cost.estimate(8) == pytest.approx(0.008)
    assert 0.001 < cost.seconds < 0.008  # the old single average fits neither size
    assert cost.estimate(16) == pytest.approx(0.016)  # unmeasured: linear from 8 rows (high)
    assert cost.estimate(2) == pytest.approx(0.002)  # unmeasured: linear from 1 row
    assert cost.estimate(6) == pytest.approx(0.008)  # 5-8 bucket, measured at 8 rows


def test_the_estimate_is_a_high_quantile_of_a_recent_window() -> None:
    cost = StepCost(0.01, quantile=0.9, window=10)
    for ms in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
        cost.update(ms / 1e3, rows=4)
    assert cost.estimate(4) == pytest.approx(0.009)  # 9 of the 10 recent steps fit in it
    cost.update(0.100, rows=4)  # one slow step: the 1 ms step leaves the window
    assert cost.estimate(4) == pytest.approx(0.010)
    for _ in range(10):
        cost.update(0.002, rows=4)
    assert cost.estimate(4) == pytest.approx(0.002)  # the slow step has left the window too


def test_a_step_without_rows_moves_only_the_overall_average() -> None:
    cost = StepCost(0.010, alpha=0.25)
    cost.update(0.020)
    assert cost.seconds == pytest.approx(0.020) and cost.buckets == {}
