"""Statistical guards for calibration: exact binomial (Clopper-Pearson) upper bounds.

A threshold fitted on validation as a point estimate ("the exited rows erred no more than the last
exit did") overfits: it picks the luckiest subset. The guards below accept a subset only when an
upper confidence bound meets the target, at a stated one-sided confidence gamma.

* `cp_upper(x, n, gamma)`: one-sided Clopper-Pearson upper bound on a binomial proportion, i.e. the
  p solving P(Bin(n, p) <= x) = 1 - gamma (the Beta(x+1, n-x) quantile at gamma).
* `cp_upper_at_most(x, n, bound, gamma)`: cp_upper <= bound without the bisection, because the
  binomial CDF falls with p: cp_upper <= b  <=>  P(Bin(n, b) <= x) <= 1 - gamma.
* `loss_upper` / `loss_within`: paired accuracy loss against the last exit on the same n rows.
  The errors both make cancel; what is left is `lost` (rows only the last exit gets right) minus
  `gained` (rows only the policy gets right), loss = (lost - gained) / n. Only the e rows that
  left early can differ from the last exit. The bound takes the Clopper-Pearson upper bound of
  the lost rate and the lower bound of the gained rate among them, each at (1 + gamma) / 2
  (Bonferroni, jointly >= gamma): (e cp_upper(lost, e) - e cp_lower(gained, e)) / n.
  History: the exact conditional McNemar bound (conditional on lost + gained) was tried first;
  with gained = 0 it equals the point estimate. Then a bound on `lost` alone that credited the
  gains as observed; on the default model that let a region with 11 lost / 11 gained validation
  rows pass, which lost 12 / gained 6 on test. Gains are noisy too, hence both bounds.

* Guard methods (`GUARDS`; `use_guard` sets the one `loss_upper` / `loss_within` apply):
  - "exact" (above, the default): exact binomial bounds, Bonferroni over lost and gained. Valid
    in finite samples but it spends the margin twice: two 90 % bounds for one 80 % statement.
  - "score" (opt-in): one joint bound on the paired difference, Tango's score statistic for
    the difference of paired proportions (Tango 1998; recommended by Fagerland, Lydersen and
    Laake 2013 for McNemar non-inferiority). Each of the n rows contributes X = +1 (lost),
    -1 (gained) or 0; under H0 "mean X = d" the nuisance rate of gains is its restricted maximum
    likelihood estimate, and Z(d) = (lost - gained + 1/2 - n d) / sqrt(n (2 p_g + d - d^2)),
    with a half-row continuity correction. The bound is the d where Z(d) = -z_confidence.
    Asymptotic, not exact: without the correction its simulated coverage fell to 0.67 at
    n = 250 (nominal 0.8); with it, every point of a grid of n in {250, 528, 1057}, lost rate
    0.2-4 %, true loss 0-1 % covered >= 0.80 (3,000 draws each; tests/unit/policies/test_guard.py
    keeps the worst cases). Not the default: on the default model it bought +0.04x for max-prob
    on test, and on 20 validation halves (`python -m bench.studies.guard_halves`) the
    calibrated promise broke in 6/20 (max-prob) and 11/20 (BEEM) halvings against 2/20 and
    5/20 with "exact". The bound covers one fixed threshold; picking the fastest of ~256 that
    pass it needs the extra margin.

Everything is vectorised over tensors of counts (float64), no scipy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from statistics import NormalDist

import torch

from policies.base import PolicyError, check_choice, check_number

GUARDS = ("score", "exact")
DEFAULT_GUARD = "exact"
_GUARD: ContextVar[str] = ContextVar("eeserve_guard", default=DEFAULT_GUARD)

_HALF_ROW = 0.5  # continuity correction of the score bound (rows)
_CELLS = 4_000_000  # rows x (max count + 1) cells evaluated at once


def check_confidence(confidence: float) -> float:
    """A one-sided confidence in [0.5, 1)."""
    return check_number("confidence", confidence, 0.5, 1.0 - 1e-12)


def check_guard(method: str) -> str:
    return check_choice("guard", method, GUARDS)


@contextmanager
def use_guard(method: str) -> Iterator[None]:
    """Make `method` the guard of `loss_upper` / `loss_within` inside the block."""
    token = _GUARD.set(check_guard(method))
    try:
        yield
    finally:
        _GUARD.reset(token)


def current_guard() -> str:
    return _GUARD.get()


def _as64(v: torch.Tensor | float | int) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


@dataclass(frozen=True)
class _Terms:
    """The p-free part of log P(Bin(n, p) = j) for j = 0..J, rows of (x, n) with 0 <= x < n."""

    log_choose: torch.Tensor  # (m, J) log C(n, j), -inf where j > x
    j: torch.Tensor  # (m, J) j clamped to n
    n: torch.Tensor  # (m, 1)

    def cdf(self, p: torch.Tensor) -> torch.Tensor:
        """P(Bin(n, p) <= x) for (m,) probabilities p."""
        pc = p.unsqueeze(1)  # (m, 1)
        log_pmf = self.log_choose + torch.xlogy(self.j, pc) + torch.xlogy(self.n - self.j, 1 - pc)
        return torch.logsumexp(log_pmf, dim=1).exp().clamp(0.0, 1.0)  # (m,)


def _terms(x: torch.Tensor, n: torch.Tensor) -> Iterator[tuple[torch.Tensor, _Terms]]:
    """(row indices, terms) for the rows with 0 <= x < n, in chunks of bounded size."""
    idx = ((x >= 0) & (x < n)).nonzero().squeeze(1)
    if len(idx) == 0:
        return
    top = int(x[idx].max())
    j = torch.arange(top + 1, dtype=torch.float64)  # (J,)
    chunk = max(1, _CELLS // (top + 1))
    for s in range(0, len(idx), chunk):
        rows = idx[s:s + chunk]
        xs, ns = x[rows, None], n[rows, None]  # (m, 1)
        jj = torch.minimum(j[None, :], ns)  # (m, J) clamped so lgamma stays finite
        log_choose = torch.lgamma(ns + 1) - torch.lgamma(jj + 1) - torch.lgamma(ns - jj + 1)
        yield rows, _Terms(log_choose.masked_fill(j[None, :] > xs, -torch.inf), jj, ns)


def binom_cdf(x: torch.Tensor | float, n: torch.Tensor | float,
              p: torch.Tensor | float) -> torch.Tensor:
    """P(Bin(n, p) <= x) elementwise (broadcast), exact via log-space summation of the pmf."""
    x64, n64, p64 = torch.broadcast_tensors(_as64(x), _as64(n), _as64(p))
    shape = x64.shape
    x64, n64 = x64.reshape(-1).floor(), n64.reshape(-1)  # (M,)
    p64 = p64.reshape(-1).clamp(0.0, 1.0)  # (M,)
    out = torch.where(x64 < 0, 0.0, 1.0).double()  # x >= n: the whole distribution
    for rows, terms in _terms(x64, n64):
        out[rows] = terms.cdf(p64[rows])
    return out.reshape(shape)


def cp_upper(x: torch.Tensor | float, n: torch.Tensor | float, confidence: float) -> torch.Tensor:
    """One-sided Clopper-Pearson upper bound on p from x successes in n trials (1 when n == 0)."""
    gamma = check_confidence(confidence)
    x64, n64 = torch.broadcast_tensors(_as64(x), _as64(n))
    shape = x64.shape
    x64, n64 = x64.reshape(-1).floor(), n64.reshape(-1)  # (M,)
    out = torch.ones_like(x64)  # n == 0 or x >= n
    for rows, terms in _terms(x64, n64):
        lo = x64[rows] / n64[rows]  # the point estimate is a lower limit
        hi = torch.ones_like(lo)
        for _ in range(48):  # bisection: the CDF at p falls as p rises
            mid = (lo + hi) / 2
            above = terms.cdf(mid) > 1 - gamma  # the bound lies above mid
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        out[rows] = hi
    return out.reshape(shape)


def cp_upper_at_most(x: torch.Tensor, n: torch.Tensor, bound: torch.Tensor | float,
                     confidence: float) -> torch.Tensor:
    """Bool tensor: cp_upper(x, n, confidence) <= bound (bound >= 1 always holds)."""
    gamma = check_confidence(confidence)
    x64, n64, b64 = torch.broadcast_tensors(_as64(x), _as64(n), _as64(bound))
    inside = binom_cdf(x64, n64, b64.clamp(0.0, 1.0)) <= 1 - gamma
    return (b64 >= 1) | ((n64 > 0) & (x64 < n64) & (b64 > 0) & inside)


def cp_lower(x: torch.Tensor | float, n: torch.Tensor | float, confidence: float) -> torch.Tensor:
    """One-sided Clopper-Pearson lower bound on p from x successes in n trials (0 when x == 0):
    the p solving P(Bin(n, p) >= x) = 1 - gamma, i.e. P(Bin(n, p) <= x - 1) = gamma."""
    gamma = check_confidence(confidence)
    x64, n64 = torch.broadcast_tensors(_as64(x), _as64(n))
    shape = x64.shape
    x64, n64 = x64.reshape(-1).floor(), n64.reshape(-1)  # (M,)
    out = torch.where((x64 >= n64) & (n64 > 0), (1 - gamma) ** (1 / n64.clamp_min(1)), 0.0)
    for rows, terms in _terms(x64 - 1, n64):  # rows with 1 <= x < n
        lo = torch.zeros_like(x64[rows])
        hi = x64[rows] / n64[rows]  # the point estimate is an upper limit
        for _ in range(48):  # bisection: the CDF at p falls as p rises
            mid = (lo + hi) / 2
            below = terms.cdf(mid) > gamma  # the bound lies above mid
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        out[rows] = lo
    return out.reshape(shape).double()


def exact_loss_upper(lost: torch.Tensor | float, gained: torch.Tensor | float,
                     n: torch.Tensor | float, confidence: float,
                     early: torch.Tensor | float | None = None) -> torch.Tensor:
    """Upper bound on the paired accuracy loss (lost - gained) / n at `confidence`.

    Only the `early` rows that left before the last exit can differ from it (default: all n).
    Among them, the lost rate gets its Clopper-Pearson upper bound and the gained rate its lower
    bound, each at (1 + confidence) / 2, so both hold together with probability >= confidence
    (Bonferroni): (e cp_upper(lost, e) - e cp_lower(gained, e)) / n; 0 when nothing left early.
    """
    e = n if early is None else early
    lost64, gained64, n64, e64 = torch.broadcast_tensors(_as64(lost), _as64(gained), _as64(n),
                                                         _as64(e))
    each = (1 + check_confidence(confidence)) / 2
    worst = cp_upper(lost64, e64, each) - cp_lower(gained64, e64, each)  # (M,) rate bound
    bound = e64 * worst / n64.clamp_min(1)
    return torch.where(e64 > 0, bound, torch.zeros_like(bound))


def exact_loss_within(lost: torch.Tensor, gained: torch.Tensor, n: torch.Tensor,
                      tolerance: float, confidence: float) -> torch.Tensor:
    """Bool tensor: exact_loss_upper(lost, gained, n) <= tolerance (n == 0 always passes)."""
    tol = check_number("tolerance", tolerance, 0.0, 1.0)
    lost64, gained64, n64 = torch.broadcast_tensors(_as64(lost), _as64(gained), _as64(n))
    each = (1 + check_confidence(confidence)) / 2
    room = tol + cp_lower(gained64, n64, each)  # the lost rate's upper bound may reach this
    ok = cp_upper_at_most(lost64, n64, room, each)  # one bisection instead of two
    return torch.where(n64 > 0, ok, torch.ones_like(ok))


@dataclass(frozen=True)
class PairedCounts:
    """Correctness of a policy against the last exit on the same rows."""

    lost: int  # rows the last exit gets right and the policy gets wrong
    gained: int  # rows the policy gets right and the last exit gets wrong
    n: int  # rows compared

    def upper(self, confidence: float, early: int | None = None) -> float:
        """Upper confidence bound on the accuracy loss (fraction; negative = a gain)."""
        return float(loss_upper(self.lost, self.gained, self.n, confidence, early))


def paired_counts(pred: torch.Tensor, final: torch.Tensor, labels: torch.Tensor) -> PairedCounts:
    """Count the rows where exactly one of `pred` and the last exit `final` is right."""
    if not pred.shape == final.shape == labels.shape:
        raise PolicyError(f"shapes differ: {tuple(pred.shape)}, {tuple(final.shape)}, "
                          f"{tuple(labels.shape)}")
    right, final_right = pred == labels, final == labels  # (N,), (N,)
    return PairedCounts(int((final_right & ~right).sum()), int((right & ~final_right).sum()),
                        int(labels.shape[0]))


# ---- joint score bound (Tango) ----------------------------------------------------------------
def _gain_rate(lost: torch.Tensor, gained: torch.Tensor, n: torch.Tensor,
               d: torch.Tensor) -> torch.Tensor:
    """Restricted MLE of the gain rate p_g under mean X = d (p_l = p_g + d), by bisection on the
    score of the trinomial likelihood, which falls as p_g rises."""
    lo = torch.clamp(-d, min=0.0)
    hi = (1 - d) / 2
    rest = n - lost - gained
    for _ in range(50):
        p = (lo + hi) / 2
        f = (lost / (p + d) + gained / p - 2 * rest / (1 - 2 * p - d)).nan_to_num(0.0)
        lo, hi = torch.where(f > 0, p, lo), torch.where(f > 0, hi, p)
    return (lo + hi) / 2


def _score_z(lost: torch.Tensor, gained: torch.Tensor, n: torch.Tensor,
             d: torch.Tensor) -> torch.Tensor:
    """Tango's Z(d) for H0: mean X = d, continuity-corrected by half a row; more negative =
    stronger evidence that mean X < d."""
    pg = _gain_rate(lost, gained, n, d)
    var = (n * (2 * pg + d - d * d)).clamp_min(1e-300)
    return (lost - gained + _HALF_ROW - n * d) / var.sqrt()


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(check_confidence(confidence))


def score_loss_upper(lost: torch.Tensor | float, gained: torch.Tensor | float,
                     n: torch.Tensor | float, confidence: float,
                     early: torch.Tensor | float | None = None) -> torch.Tensor:
    """Tango score upper bound on the paired loss (lost - gained) / n; 0 when nothing left early.
    The bound d solves Z(d) = -z (bisection over [point estimate, 1])."""
    e = n if early is None else early
    l64, g64, n64, e64 = torch.broadcast_tensors(_as64(lost), _as64(gained), _as64(n), _as64(e))
    z = _z(confidence)
    nn_ = n64.clamp_min(1)
    lo = (l64 - g64) / nn_  # Z(point estimate) = 0 > -z
    hi = torch.full_like(lo, 1.0 - 1e-12)
    for _ in range(50):
        mid = (lo + hi) / 2
        above = _score_z(l64, g64, nn_, mid) > -z  # d = mid is still plausible
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return torch.where((e64 > 0) & (n64 > 0), hi, torch.zeros_like(hi))


def score_loss_within(lost: torch.Tensor, gained: torch.Tensor, n: torch.Tensor,
                      tolerance: float, confidence: float) -> torch.Tensor:
    """Bool tensor: H0 "loss >= tolerance" rejected by the score test (n == 0 always passes)."""
    tol = check_number("tolerance", tolerance, 0.0, 1.0)
    l64, g64, n64 = torch.broadcast_tensors(_as64(lost), _as64(gained), _as64(n))
    d = torch.full_like(l64, min(tol, 1.0 - 1e-9))
    ok = _score_z(l64, g64, n64.clamp_min(1), d) <= -_z(confidence)
    return torch.where(n64 > 0, ok, torch.ones_like(ok))


def loss_upper(lost: torch.Tensor | float, gained: torch.Tensor | float, n: torch.Tensor | float,
               confidence: float, early: torch.Tensor | float | None = None) -> torch.Tensor:
    """Upper confidence bound on the paired accuracy loss (lost - gained) / n with the current
    guard method (`use_guard`): `score_loss_upper` or `exact_loss_upper`."""
    fn = score_loss_upper if current_guard() == "score" else exact_loss_upper
    return fn(lost, gained, n, confidence, early)


def loss_within(lost: torch.Tensor, gained: torch.Tensor, n: torch.Tensor, tolerance: float,
                confidence: float) -> torch.Tensor:
    """Bool tensor: the current guard's loss bound is within `tolerance` (n == 0 passes)."""
    fn = score_loss_within if current_guard() == "score" else exact_loss_within
    return fn(lost, gained, n, tolerance, confidence)
