"""Live agreement: how often early answers equal the full-depth answer, its bounds, the alarm and
the guarded retuning rule. Pure functions on counts; the engine keeps the counts.

A shadow check runs an early-exited row on to the last exit and records whether the two answers
agree. Over n checks with `agree` agreements, the one-sided Clopper-Pearson bounds (the family of
the calibration guard, policies/guard.py) at confidence gamma give

    lower = cp_lower(agree, n)   "agreement is at least this" (proof that a promise is kept)
    upper = cp_upper(agree, n)   "agreement is at most this"  (proof that a promise is broken)

The promise is a floor on agreement (see `promise_from_validation`). The verdict is

    broken  when upper < promise and n >= min_support   (the alarm; false alarm rate <= 1 - gamma
                                                          at each look while the promise holds)
    kept    when lower >= promise and n >= min_support
    unknown otherwise

Why the alarm uses the upper bound: `lower < promise` only says "not proven kept yet"; with a
promise half a point below the true agreement it stays true for the first ~1000 checks, so an
alarm on it fires on healthy traffic. The lower bound is still exported (it is what an operator
can rely on) and it gates every step that lowers a threshold.

Retuning (`retune_direction`, `step_threshold`): raise an exit's threshold one step when its
verdict is broken; lower it one step back toward (never below) its calibrated value only when the
lower bound clears the promise by a hysteresis margin; otherwise hold. Steps move the threshold
along the validation score distribution of that exit: one raise removes `step` of the validation
rows that still exit there, so the step size means the same for every policy's score scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from policies.base import PolicyError, check_int, check_number
from policies.guard import check_confidence

Verdict = Literal["kept", "broken", "unknown"]
Direction = Literal["raise", "lower", "hold"]


@dataclass(frozen=True)
class AlarmConfig:
    confidence: float = 0.95  # one-sided confidence of each bound
    min_support: int = 100  # checks before any verdict (alarm or retuning)
    hysteresis: float = 0.005  # lowering needs lower >= promise + hysteresis
    step: float = 0.25  # share of an exit's validation exits one retuning step removes/restores

    def validate(self) -> AlarmConfig:
        check_confidence(self.confidence)
        check_int("min_support", self.min_support, 1, 10**9)
        check_number("hysteresis", self.hysteresis, 0.0, 1.0)
        check_number("step", self.step, 1e-6, 0.999)
        return self


@dataclass(frozen=True)
class Judgement:
    agree: int
    n: int
    lower: float  # NaN when n == 0
    upper: float
    promise: float
    verdict: Verdict


def agreement_bounds(agree: int, n: int, confidence: float) -> tuple[float, float]:
    """(lower, upper) Clopper-Pearson bounds on the agreement rate; (0, 1) when n == 0."""
    if not 0 <= agree <= n:
        raise PolicyError(f"agree={agree} must be within 0..n={n}")
    if n == 0:
        return 0.0, 1.0
    check_confidence(confidence)
    d = n - agree  # bounds on the (few) disagreements: exact, as Clopper-Pearson is symmetric
    return 1.0 - _cp_upper(d, n, confidence), 1.0 - _cp_lower(d, n, confidence)


def _binom_cdf(x: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= x), summed in log space (x + 1 terms)."""
    if x < 0:
        return 0.0
    if x >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    ratio = math.log(p) - math.log1p(-p)
    logs = [n * math.log1p(-p)]  # log P(j = 0); then the pmf's term-to-term ratio
    for j in range(x):
        logs.append(logs[-1] + math.log((n - j) / (j + 1)) + ratio)
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _bisect(f: Callable[[float], bool], lo: float, hi: float) -> float:
    """The boundary in [lo, hi] where `f` (True below it) turns False, to ~1e-12."""
    for _ in range(42):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) else (lo, mid)
    return hi


def _cp_upper(x: int, n: int, gamma: float) -> float:
    """Scalar `policies.guard.cp_upper` (same bound; the tensor version costs ~10 ms a call)."""
    if x >= n:
        return 1.0
    return _bisect(lambda p: _binom_cdf(x, n, p) > 1 - gamma, x / n, 1.0)


def _cp_lower(x: int, n: int, gamma: float) -> float:
    """Scalar `policies.guard.cp_lower`."""
    if x <= 0:
        return 0.0
    if x >= n:
        return float((1 - gamma) ** (1 / n))
    return _bisect(lambda p: _binom_cdf(x - 1, n, p) > gamma, 0.0, x / n)


def judge(agree: int, n: int, promise: float, cfg: AlarmConfig) -> Judgement:
    """The bounds and the verdict of `agree` agreements in `n` checks against `promise`."""
    lower, upper = agreement_bounds(agree, n, cfg.confidence)
    verdict: Verdict = "unknown"
    if n >= cfg.min_support:
        if upper < promise:
            verdict = "broken"
        elif lower >= promise:
            verdict = "kept"
    return Judgement(agree, n, lower, upper, promise, verdict)


def retune_direction(j: Judgement, cfg: AlarmConfig, above_calibrated: bool) -> Direction:
    """Raise on a broken promise; lower (only when above the calibrated threshold) on a promise
    kept by `hysteresis`; hold otherwise (too little support, or inside the band)."""
    if j.n < cfg.min_support:
        return "hold"
    if j.verdict == "broken":
        return "raise"
    if above_calibrated and j.lower >= j.promise + cfg.hysteresis:
        return "lower"
    return "hold"


def _as_float(t: float | None) -> float:
    return math.inf if t is None else float(t)


def step_threshold(val_scores: torch.Tensor, current: float | None, calibrated: float | None,
                   direction: Direction, step: float) -> float | None:
    """The next threshold of one exit (None = never exit there).

    `val_scores` (N,) are the policy's scores at this exit on validation rows. A raise keeps
    (1 - step) of the validation rows that pass `current` (never exit when that leaves none); a
    lower lets 1 / (1 - step) times as many pass, clamped to the calibrated threshold, which is
    never undercut. `hold` returns `current`.
    """
    if direction == "hold":
        return current
    s = torch.sort(val_scores.double().flatten(), descending=True).values  # (N,)
    if s.numel() == 0:
        return current if direction == "lower" else None
    cur, cal = _as_float(current), _as_float(calibrated)
    passing = int((s >= cur).sum())
    if direction == "raise":
        keep = math.floor(passing * (1 - step))
        if keep < 1:
            return None
        nxt = float(s[keep - 1])
        # equal scores can make the quantile land on `cur`: move just above it then
        return nxt if nxt > cur else math.nextafter(cur, math.inf)
    if cur <= cal:
        return calibrated
    more = max(passing + 1, math.ceil(passing / (1 - step)))
    nxt = float(s[min(more, s.numel()) - 1])
    return calibrated if nxt <= cal else nxt


@dataclass(frozen=True)
class ValidationAgreement:
    """Agreement with the last exit of a policy replayed on validation logits."""

    per_exit: list[tuple[int, int]]  # (agree, rows exited there) for exits 1..K
    overall: tuple[int, int]  # (agree, all rows)

    def early(self) -> tuple[int, int]:
        """Pooled over exits 1..K-1."""
        return (sum(a for a, _ in self.per_exit[:-1]), sum(n for _, n in self.per_exit[:-1]))


def validation_agreement(exit_layer: torch.Tensor, prediction: torch.Tensor,
                         final: torch.Tensor, num_exits: int) -> ValidationAgreement:
    """Count agreements per exit from a replay: (N,) exit layers (1-based) and predictions."""
    same = prediction == final  # (N,)
    per = [(int((same & (exit_layer == k)).sum()), int((exit_layer == k).sum()))
           for k in range(1, num_exits + 1)]
    return ValidationAgreement(per, (int(same.sum()), int(same.numel())))


def promise_from_validation(val: ValidationAgreement, tolerance: float,
                            min_support: int) -> tuple[list[float], float]:
    """(per-exit promises, overall promise): the validation agreement minus `tolerance`.

    The calibration promised at most `tolerance` accuracy lost against the last exit. Without
    labels, every extra disagreement may be a loss, so live agreement may fall at most
    `tolerance` below what validation showed. Exits with fewer than `min_support` validation
    rows use the pooled early agreement; with no early rows at all, 1 - tolerance.
    """
    tol = check_number("tolerance", tolerance, 0.0, 1.0)
    ea, en = val.early()
    pooled = (ea / en if en else 1.0) - tol
    per = [(a / n - tol) if n >= min_support else pooled for a, n in val.per_exit]
    per[-1] = 1.0  # the last exit is the full-depth answer
    oa, on = val.overall
    return per, (oa / on if on else 1.0) - tol
