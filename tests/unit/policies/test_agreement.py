"""Live-agreement bounds, the alarm on synthetic streams of known agreement, and the retuning
rule (thresholds move toward safety only with evidence, never below the calibration)."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest
import torch

from policies.agreement import (
    AlarmConfig,
    Direction,
    agreement_bounds,
    judge,
    promise_from_validation,
    retune_direction,
    step_threshold,
    validation_agreement,
)
from policies.base import PolicyError

CFG = AlarmConfig(confidence=0.95, min_support=100, hysteresis=0.005, step=0.25)


def test_bounds_bracket_the_rate_and_match_the_closed_form() -> None:
    lo, hi = agreement_bounds(90, 100, 0.95)
    assert lo < 0.9 < hi
    lo, hi = agreement_bounds(50, 50, 0.95)
    assert hi == 1.0 and lo == pytest.approx(0.05 ** (1 / 50), rel=1e-9)
    assert agreement_bounds(0, 0, 0.95) == (0.0, 1.0)
    with pytest.raises(PolicyError, match="agree=5"):
        agreement_bounds(5, 4, 0.95)


def _first_alarm(p: float, promise: float, seed: int, checks: int, window: int) -> int | None:
    """Checks seen when the alarm first fires on a Bernoulli(p) stream (None: never)."""
    rng = random.Random(seed)
    win: deque[bool] = deque(maxlen=window)
    for i in range(1, checks + 1):
        win.append(rng.random() < p)
        if i % 50 == 0 and judge(sum(win), len(win), promise, CFG).verdict == "broken":
            return i
    return None


def test_alarm_fires_on_a_broken_promise() -> None:
    fired = [_first_alarm(0.90, 0.95, seed, 2000, 1000) for seed in range(10)]
    assert all(f is not None and f <= 400 for f in fired), fired


def test_alarm_stays_silent_while_the_promise_is_kept() -> None:
    fired = [_first_alarm(0.97, 0.95, seed, 3000, 1000) for seed in range(10)]
    assert fired == [None] * 10


def test_alarm_needs_support() -> None:
    assert judge(0, 99, 0.99, CFG).verdict == "unknown"
    assert judge(0, 100, 0.99, CFG).verdict == "broken"
    assert judge(100, 100, 0.9, CFG).verdict == "kept"


def test_retune_direction_needs_evidence() -> None:
    broken = judge(80, 200, 0.95, CFG)
    assert retune_direction(broken, CFG, above_calibrated=False) == "raise"
    assert retune_direction(judge(8, 10, 0.95, CFG), CFG, True) == "hold"  # too few checks
    inside = judge(196, 200, 0.95, CFG)  # point 0.98 but the lower bound is near the promise
    assert inside.verdict != "broken"
    assert retune_direction(inside, CFG, above_calibrated=True) == "hold"
    clear = judge(2000, 2000, 0.95, CFG)
    assert retune_direction(clear, CFG, above_calibrated=True) == "lower"
    assert retune_direction(clear, CFG, above_calibrated=False) == "hold"


def test_step_threshold_raises_and_lowers_along_the_validation_scores() -> None:
    scores = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)  # 0.00 .. 1.00
    up = step_threshold(scores, 0.6, 0.6, "raise", 0.25)  # 41 pass -> 30 pass
    assert up is not None and up == pytest.approx(0.71)
    down = step_threshold(scores, up, 0.6, "lower", 0.25)  # 30 pass -> 40 pass
    assert down is not None and 0.6 <= down < up
    assert step_threshold(scores, 0.62, 0.6, "lower", 0.9) == 0.6  # clamped to calibration
    assert step_threshold(scores, 1.0, 0.6, "raise", 0.25) is None  # nobody would exit
    back = step_threshold(scores, None, 0.6, "lower", 0.25)
    assert back is not None and back >= 0.6
    assert step_threshold(scores, 0.6, 0.6, "hold", 0.25) == 0.6
    ties = torch.full((50,), 0.8, dtype=torch.float64)
    raised = step_threshold(ties, 0.8, 0.8, "raise", 0.25)
    assert raised is None or raised > 0.8


@pytest.mark.parametrize("seed", range(4))
def test_random_retuning_never_undercuts_the_calibration(seed: int) -> None:
    """Whatever the evidence sequence, a threshold never goes below its calibrated value, and
    without evidence (support below the floor) it never moves."""
    rng = random.Random(seed)
    scores = torch.rand(500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cal: float | None = 0.5
    t: float | None = cal
    for _ in range(60):
        n = rng.randint(0, 400)
        j = judge(rng.randint(0, n), n, 0.9, CFG)
        d: Direction = retune_direction(j, CFG, above_calibrated=(t is None or t > 0.5))
        nxt = step_threshold(scores, t, cal, d, CFG.step)
        if n < CFG.min_support:
            assert nxt == t
        if d == "raise":
            assert nxt is None or (t is not None and nxt > t)
        assert nxt is None or nxt >= 0.5
        t = nxt


def test_promise_from_validation_subtracts_the_tolerance() -> None:
    exit_layer = torch.tensor([1] * 40 + [2] * 10 + [3] * 50)
    final = torch.zeros(100, dtype=torch.long)
    pred = final.clone()
    pred[:2] = 1  # 2 of the 40 exit-1 rows disagree
    pred[40] = 1  # 1 of the 10 exit-2 rows
    val = validation_agreement(exit_layer, pred, final, 3)
    assert val.per_exit == [(38, 40), (9, 10), (50, 50)]
    per, overall = promise_from_validation(val, 0.005, min_support=30)
    assert per[0] == pytest.approx(38 / 40 - 0.005)
    assert per[1] == pytest.approx(47 / 50 - 0.005)  # too few rows: the pooled early rate
    assert per[2] == 1.0
    assert overall == pytest.approx(0.97 - 0.005)
    assert math.isclose(promise_from_validation(validation_agreement(
        torch.full((5,), 3), final[:5], final[:5], 3), 0.01, 30)[0][0], 0.99)


def test_alarm_config_validates() -> None:
    with pytest.raises(PolicyError, match="step"):
        AlarmConfig(step=1.5).validate()


@pytest.mark.parametrize(("agree", "n"), [(0, 7), (3, 7), (950, 1000), (1000, 1000), (60, 200)])
def test_scalar_bounds_equal_the_calibration_guard(agree: int, n: int) -> None:
    from policies.guard import cp_lower, cp_upper
    lo, hi = agreement_bounds(agree, n, 0.9)
    assert lo == pytest.approx(float(cp_lower(agree, n, 0.9)), abs=1e-9)
    assert hi == pytest.approx(float(cp_upper(agree, n, 0.9)), abs=1e-9)
