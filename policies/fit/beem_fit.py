"""BEEM thresholds from validation error rates, with a support floor and a statistical guard.

algorithms.md §A.4 (BEEM §3.4.2, reconstructed): walk the exits in order; at exit i take the
smallest alpha_i (the most rows leaving) such that the validation rows that would leave at i, among
those still in flight, err no more than the final layer. As a point estimate this overfits (it
picks the luckiest subset; a plain run lost ~2 accuracy points on test), so a candidate subset of
n rows is accepted only when

* n >= `min_support` (support floor), and
* an upper confidence bound at `confidence` meets the target with `tolerance`:
  - reference="paired" (default): the bound on the subset's accuracy loss against the last exit
    on the same rows (Clopper-Pearson on the rows lost, minus the rows gained;
    `policies.guard.loss_within`) is <= tolerance;
  - reference="overall" (the paper's p_L): the Clopper-Pearson bound on the subset's error rate is
    <= p_L + tolerance, p_L the last exit's error rate on all validation rows.

pooling="exit" guards each exit's subset alone; pooling="cumulative" guards it together with the
rows that left at earlier exits (one pooled bound, so less margin is spent per exit). Either way
the rows that leave early lose at most `tolerance` of themselves, hence of the whole split. The
alternative is one global alpha ("vanilla", §6.2), chosen by a sweep for a target loss (guarded)
or a target speed-up.

method "normalised" (`fit_normalised`): per-exit thresholds alpha_k = alpha * W_k tied by one
alpha, W_k = w_1 + ... + w_k the score of a full-length streak of certain exits. S_k >= alpha W_k
reads "the streak's weighted confidence, counting disagreeing exits as 0, is at least alpha".
One alpha is swept and guarded once, like max-prob's tau, instead of spending the guard per exit
(per-exit fits) or comparing scores on the weights' scale (global alpha, which at exit 1 with
w_1 = 1/6 either fires for every row or never).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from policies.base import PolicyError, check_choice, check_int, check_number, probabilities
from policies.beem import RESETS, BeemPolicy
from policies.costs import ExitCosts
from policies.fit.sweep import (
    OperatingPoint,
    candidate_thresholds,
    exits_for,
    fastest_within,
    operating_point,
    result_for,
    settle,
    slowest_reaching,
    sweep_global,
)
from policies.guard import check_confidence, cp_upper_at_most, loss_within
from policies.replay import Trace, trace

REFERENCES = ("paired", "overall")
POOLINGS = ("exit", "cumulative")


@dataclass(frozen=True)
class BeemFitConfig:
    tolerance: float = 0.005  # allowed accuracy loss vs the last exit (fraction: 0.005 = 0.5 pt)
    confidence: float = 0.9  # one-sided confidence of the guard
    min_support: int = 30  # fewest validation rows a per-exit threshold may rest on
    reference: str = "paired"  # "paired" (same rows at the last exit) or "overall" (paper p_L)
    reset: str = "weighted"  # BEEM score after a disagreement: w_k C_k or 0
    pooling: str = "exit"  # guard each exit's rows alone, or with the rows that left before

    def validate(self) -> None:
        check_number("beem: tolerance", self.tolerance, 0.0, 1.0)
        check_confidence(self.confidence)
        check_int("beem: min_support", self.min_support, 1, 10**9)
        check_choice("beem: reference", self.reference, REFERENCES)
        check_choice("beem: reset", self.reset, RESETS)
        check_choice("beem: pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class ExitThreshold:
    """How the threshold of one exit was chosen, on the rows still in flight there."""

    exit: int  # 1-based
    threshold: float | None  # None: no subset passed the guard, the exit never fires
    in_flight: int  # validation rows that reached this exit
    support: int  # rows that leave here
    errors: int  # of those, wrong at this exit
    lost: int  # right at the last exit, wrong here
    gained: int  # wrong at the last exit, right here


@dataclass(frozen=True)
class BeemFit:
    """Fitted BEEM parameters and their validation operating point."""

    weighting: str
    weights: list[float]
    reset: str
    thresholds: list[float | None]
    method: str  # "per-exit", "per-exit cumulative" or "global"
    point: OperatingPoint
    alpha: float | None = None  # the global alpha (method "global")
    exits: list[ExitThreshold] = field(default_factory=list)  # per-exit records
    power: float = 1.0  # BEEM-C weights (cumcost_k / cumcost_K)**power (1: the paper's)

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "weights": self.weights, "reset": self.reset,
                "thresholds": self.thresholds}


def beem_trace(logits: torch.Tensor, weights: list[float], reset: str) -> Trace:
    """S_k and argmax_k of every row at every exit (§A.2), nobody leaving."""
    k = logits.shape[1]
    return trace(BeemPolicy(k, weights, [None] * k, reset), logits)


@dataclass(frozen=True)
class _Tally:
    """Counts over rows that already left (the `cumulative` pooling starts from them)."""

    n: int = 0
    errors: int = 0
    lost: int = 0
    gained: int = 0

    def plus(self, rec: ExitThreshold) -> _Tally:
        return _Tally(self.n + rec.support, self.errors + rec.errors, self.lost + rec.lost,
                      self.gained + rec.gained)


def _exit_threshold(i: int, scores: torch.Tensor, wrong: torch.Tensor, final_wrong: torch.Tensor,
                    final_error: float, prior: _Tally, cfg: BeemFitConfig) -> ExitThreshold:
    """The most permissive guarded threshold of one exit over the rows in flight (1-D inputs).

    The guard sees the candidate subset alone (pooling "exit") or together with the rows that
    left at earlier exits (`prior`, pooling "cumulative").
    """
    m = scores.shape[0]
    order = torch.argsort(scores, descending=True, stable=True)  # (m,)
    s, w, fw = scores[order], wrong[order], final_wrong[order]  # (m,) each
    n = torch.arange(1, m + 1, dtype=torch.float64)  # (m,) prefix sizes
    errors = w.double().cumsum(0)  # (m,)
    lost = (w & ~fw).double().cumsum(0)  # (m,)
    gained = (~w & fw).double().cumsum(0)  # (m,)
    boundary = torch.ones(m, dtype=torch.bool)  # (m,) prefix = every row with score >= s[j]
    boundary[:-1] = s[:-1] > s[1:]
    base = prior if cfg.pooling == "cumulative" else _Tally()
    if cfg.reference == "paired":
        guard = loss_within(lost + base.lost, gained + base.gained, n + base.n, cfg.tolerance,
                            cfg.confidence)
    else:
        guard = cp_upper_at_most(errors + base.errors, n + base.n,
                                 final_error + cfg.tolerance, cfg.confidence)
    ok = (boundary & guard & (n >= cfg.min_support)).nonzero().squeeze(1)  # (P,)
    if len(ok) == 0:
        return ExitThreshold(i + 1, None, m, 0, 0, 0, 0)
    j = int(ok[-1])
    alpha = float(s[j]) if j == m - 1 else (float(s[j]) + float(s[j + 1])) / 2
    return ExitThreshold(i + 1, alpha, m, j + 1, int(errors[j]), int(lost[j]), int(gained[j]))


def per_exit_thresholds(scores: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
                        cfg: BeemFitConfig) -> list[ExitThreshold]:
    """§A.4 with the guard, exits 1..K-1 in order; exit K always fires (threshold None)."""
    cfg.validate()
    n, k = scores.shape
    wrong = predictions != labels.unsqueeze(1)  # (N, K)
    final_wrong = wrong[:, -1]  # (N,)
    final_error = float(final_wrong.double().mean())
    remaining = torch.ones(n, dtype=torch.bool)  # (N,)
    left, out = _Tally(), []
    for i in range(k - 1):
        rows = remaining.nonzero().squeeze(1)  # (m,)
        rec = _exit_threshold(i, scores[rows, i], wrong[rows, i], final_wrong[rows],
                              final_error, left, cfg)
        out.append(rec)
        left = left.plus(rec)
        if rec.threshold is not None:
            remaining &= ~(scores[:, i] >= rec.threshold)
    out.append(ExitThreshold(k, None, int(remaining.sum()), int(remaining.sum()),
                             int((remaining & final_wrong).sum()), 0, 0))
    return out


def _check(logits: torch.Tensor, labels: torch.Tensor, weights: list[float]) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:1]:
        raise PolicyError(f"beem: logits (N, K, C) and labels (N,) needed, got "
                          f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if len(weights) != logits.shape[1]:
        raise PolicyError(f"beem: {len(weights)} weights for {logits.shape[1]} exits")


def fit_per_exit(logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
                 weights: list[float], weighting: str, cfg: BeemFitConfig) -> BeemFit:
    """Per-exit guarded thresholds for given weights (§A.4)."""
    _check(logits, labels, weights)
    tr = beem_trace(logits, weights, cfg.reset)
    recs = per_exit_thresholds(tr.scores, tr.predictions, labels, cfg)
    thresholds = [r.threshold for r in recs]
    exits = exits_for(tr.scores, thresholds)  # (N,)
    point = operating_point(result_for(exits, tr.predictions, labels, costs), cfg.confidence)
    method = "per-exit" if cfg.pooling == "exit" else "per-exit cumulative"
    return BeemFit(weighting, weights, cfg.reset, thresholds, method, point, exits=recs)


def fit_global(logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
               weights: list[float], weighting: str, cfg: BeemFitConfig,
               target_speedup: float | None = None) -> BeemFit:
    """One alpha for all exits: the fastest whose guarded loss <= tolerance, or (with
    `target_speedup`) the most accurate reaching that layer speed-up on validation."""
    _check(logits, labels, weights)
    cfg.validate()
    tr = beem_trace(logits, weights, cfg.reset)
    values: list[float | None] = [*candidate_thresholds(tr.scores[:, :-1]), None]
    points = sweep_global(tr.scores, tr.predictions, labels, costs, values, cfg.confidence)
    if target_speedup is not None:
        check_number("beem: target_speedup", target_speedup, 1.0, float(logits.shape[1]))
        best = slowest_reaching(points, target_speedup)
        if best is None:
            top = max(p.point.layer_speedup for p in points)
            raise PolicyError(f"beem: target_speedup={target_speedup} not reachable on "
                              f"validation (at most {top:.3f})")
    else:
        best = fastest_within(points, cfg.tolerance)
        assert best is not None  # alpha = None (full depth) has zero loss
    k = logits.shape[1]
    alpha = settle(best.value, tr.scores[:, :-1])  # same decisions, away from fitted rows
    thresholds: list[float | None] = [alpha] * (k - 1) + [None]
    return BeemFit(weighting, weights, cfg.reset, thresholds, "global", best.point,
                   alpha=None if alpha is None else float(alpha))


SUPPORT_GRID = (10, 20, 30, 50, 100)


@dataclass(frozen=True)
class FloorChoice:
    """A support floor chosen by cross-fitting on validation halves."""

    min_support: int
    trials: list[dict[str, float]]  # per floor: mean held-out loss and cost speed-up


def choose_min_support(logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
                       weights: list[float], cfg: BeemFitConfig,
                       grid: tuple[int, ...] = SUPPORT_GRID, rounds: int = 4,
                       seed: int = 0) -> FloorChoice:
    """The per-exit support floor, chosen by the data: for each floor, fit per-exit thresholds
    on one half of validation and score them on the other (both ways, `rounds` seeded
    halvings). Small floors let the fit take lucky small subsets, which shows as held-out loss.
    The floor with the best mean held-out cost speed-up among those whose mean held-out loss is
    within tolerance wins (the largest floor when none is)."""
    _check(logits, labels, weights)
    tr = beem_trace(logits, weights, cfg.reset)  # rows are independent: subset the trace
    n = labels.shape[0]
    gen = torch.Generator().manual_seed(seed)
    halves = []
    for _ in range(rounds):
        perm = torch.randperm(n, generator=gen)
        halves += [(perm[: n // 2], perm[n // 2:]), (perm[n // 2:], perm[: n // 2])]
    trials = []
    for floor in grid:
        c = replace(cfg, min_support=floor)
        losses, speeds = [], []
        for fit_rows, out_rows in halves:
            recs = per_exit_thresholds(tr.scores[fit_rows], tr.predictions[fit_rows],
                                       labels[fit_rows], c)
            exits = exits_for(tr.scores[out_rows], [r.threshold for r in recs])  # (M,)
            res = result_for(exits, tr.predictions[out_rows], labels[out_rows], costs)
            losses.append(res.accuracy_loss())
            speeds.append(res.cost_speedup())
        trials.append({"min_support": floor, "held_out_loss": sum(losses) / len(losses),
                       "held_out_cost_speedup": sum(speeds) / len(speeds)})
    ok = [t for t in trials if t["held_out_loss"] <= cfg.tolerance + 1e-12]
    best = max(ok, key=lambda t: t["held_out_cost_speedup"]) if ok else trials[-1]
    return FloorChoice(int(best["min_support"]), trials)


def streak_scale(weights: list[float]) -> list[float]:
    """W_k = w_1 + ... + w_k: the largest S_k a row can have at exit k."""
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def fit_normalised(logits: torch.Tensor, labels: torch.Tensor, costs: ExitCosts,
                   weights: list[float], weighting: str, cfg: BeemFitConfig) -> BeemFit:
    """alpha_k = alpha * W_k with one alpha: the fastest whose guarded loss <= tolerance."""
    _check(logits, labels, weights)
    cfg.validate()
    tr = beem_trace(logits, weights, cfg.reset)
    scale = torch.tensor(streak_scale(weights), dtype=torch.float64).clamp_min(1e-12)  # (K,)
    norm = tr.scores / scale  # (N, K) in [0, 1]
    values: list[float | None] = [*candidate_thresholds(norm[:, :-1]), None]
    points = sweep_global(norm, tr.predictions, labels, costs, values, cfg.confidence)
    best = fastest_within(points, cfg.tolerance)
    assert best is not None  # alpha = None (full depth) has zero loss
    k = logits.shape[1]
    alpha = settle(best.value, norm[:, :-1])  # same decisions, away from fitted rows
    thresholds: list[float | None] = [None] * k
    if alpha is not None:
        thresholds = [alpha * float(w) for w in scale[:-1]] + [None]
    return BeemFit(weighting, weights, cfg.reset, thresholds, "normalised", best.point,
                   alpha=alpha)


def exit_accuracies(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Validation accuracy of every exit (BEEM-A weights)."""
    preds = probabilities(logits).argmax(dim=-1)  # (N, K)
    return [float(a) for a in (preds == labels.unsqueeze(1)).double().mean(0)]


def best_fit(fits: list[BeemFit], tolerance: float) -> BeemFit:
    """Highest validation cost speed-up among fits whose guarded loss is within tolerance."""
    ok = [f for f in fits if f.point.loss_upper <= tolerance + 1e-12] or \
        [min(fits, key=lambda f: f.point.loss_upper)]
    return max(ok, key=lambda f: (round(f.point.cost_speedup, 9), f.point.accuracy))

