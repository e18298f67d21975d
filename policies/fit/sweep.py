"""Operating points and vectorised threshold sweeps over a policy's trace.

Every threshold policy here fires at exit k when its score s_k >= tau (BEEM's S_k, max-prob,
entropy confidence, PABEE's counter, EENet's q_k after a shift). The scores do not depend on tau,
so one `trace` (all rows through all exits) serves a whole sweep: the exit of a row is the first k
with s_k >= tau_k, the last exit when none fires (`first_firing`, the engine's last-exit rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from policies.base import PolicyError
from policies.costs import ExitCosts
from policies.guard import loss_upper
from policies.replay import ReplayResult, first_firing

MAX_CANDIDATES = 256


@dataclass(frozen=True)
class OperatingPoint:
    """What one parameter setting does on one split (fractions, not points)."""

    accuracy: float
    last_accuracy: float  # the last exit's accuracy on the same rows
    loss: float  # last_accuracy - accuracy (> 0 means worse than full depth)
    loss_upper: float  # upper confidence bound on `loss` (exact McNemar, see policies.guard)
    confidence: float  # of `loss_upper`
    mean_exit: float  # mean 1-based exit layer
    layer_speedup: float  # K / mean exit
    cost_speedup: float  # full cost / mean cost (measured latency when the manifest has it)
    cost_fraction: float  # mean cost / full cost
    exit_shares: list[float]  # (K,) share of rows leaving at each exit
    n: int

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else
                    [round(x, 6) for x in v] if isinstance(v, list) else v)
                for k, v in out.items()}


def operating_point(result: ReplayResult, confidence: float) -> OperatingPoint:
    """Summarise a replay with labels: accuracy, guarded loss, speed-ups."""
    return operating_points(result.exit_layer.unsqueeze(0), result.prediction.unsqueeze(0),
                            result.final_prediction, result._labels(), result.costs,
                            confidence)[0]


def operating_points(exits: torch.Tensor, prediction: torch.Tensor, final: torch.Tensor,
                     labels: torch.Tensor, costs: ExitCosts,
                     confidence: float) -> list[OperatingPoint]:
    """Vectorised summaries of T settings: exits and predictions (T, N), last-exit final (N,)."""
    n, k = labels.shape[0], costs.num_exits
    right, final_right = prediction == labels, final == labels  # (T, N), (N,)
    lost = (final_right & ~right).sum(1)  # (T,)
    gained = (right & ~final_right).sum(1)  # (T,)
    early = (exits < k).sum(1)  # (T,) rows that left before the last exit
    upper = loss_upper(lost, gained, n, confidence, early)  # (T,)
    acc = right.double().mean(1)  # (T,)
    last = float(final_right.double().mean())
    mean_exit = exits.double().mean(1)  # (T,)
    table = torch.tensor(costs.cumulative, dtype=torch.float64)  # (K,)
    mean_cost = table[exits - 1].mean(1)  # (T,)
    shares = torch.zeros(exits.shape[0], k, dtype=torch.float64)  # (T, K)
    shares.scatter_add_(1, exits - 1, torch.ones_like(exits, dtype=torch.float64))
    shares /= max(n, 1)
    return [OperatingPoint(
        accuracy=float(acc[t]), last_accuracy=last, loss=last - float(acc[t]),
        loss_upper=float(upper[t]), confidence=confidence, mean_exit=float(mean_exit[t]),
        layer_speedup=k / float(mean_exit[t]), cost_speedup=costs.full / float(mean_cost[t]),
        cost_fraction=float(mean_cost[t]) / costs.full, exit_shares=shares[t].tolist(), n=n)
        for t in range(exits.shape[0])]


def exits_for(scores: torch.Tensor, thresholds: Sequence[float | None]) -> torch.Tensor:
    """1-based exit per row when exit k fires at scores[:, k] >= thresholds[k] (None: never)."""
    t = torch.tensor([math.inf if x is None else float(x) for x in thresholds],
                     dtype=scores.dtype)  # (K,)
    return first_firing(scores >= t)  # (N,)


def result_for(exits: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
               costs: ExitCosts) -> ReplayResult:
    """A replay result from exit indices (N,) and every exit's predictions (N, K)."""
    pred = predictions.gather(1, (exits - 1).unsqueeze(1)).squeeze(1)  # (N,)
    return ReplayResult(exits.long(), pred, predictions[:, -1], labels, costs)


def candidate_thresholds(scores: torch.Tensor, limit: int = MAX_CANDIDATES) -> list[float]:
    """Distinct finite scores (ascending), thinned to at most `limit` evenly spaced by rank."""
    vals = torch.unique(scores[torch.isfinite(scores)])  # (U,) ascending
    if len(vals) > limit:
        pick = torch.linspace(0, len(vals) - 1, limit).round().long()  # (limit,)
        vals = torch.unique(vals[pick])
    return [float(v) for v in vals]


def settle(value: float | None, scores: torch.Tensor) -> float | None:
    """Move a threshold chosen among observed scores halfway down to the next lower one.

    Same decisions on the rows it was fitted on (rule: fire when s >= tau), but no fitted row
    sits within rounding of it, so a backend whose logits differ by 1e-6 (ONNX Runtime vs
    torch) takes the same exits there.
    """
    if value is None:
        return None
    lower = scores[torch.isfinite(scores) & (scores < value)]
    return value if lower.numel() == 0 else (value + float(lower.max())) / 2


@dataclass(frozen=True)
class SweepPoint:
    value: float | None  # the swept parameter (None = never exits early)
    point: OperatingPoint


def sweep_global(scores: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor,
                 costs: ExitCosts, values: Sequence[float | None],
                 confidence: float) -> list[SweepPoint]:
    """One global threshold per value, the same at every exit (the last exit always fires)."""
    if scores.shape != predictions.shape or scores.dim() != 2:
        raise PolicyError(f"scores {tuple(scores.shape)} and predictions "
                          f"{tuple(predictions.shape)} must both be (N, K)")
    k = scores.shape[1]
    exits = torch.stack([exits_for(scores, [v] * k) for v in values])  # (T, N)
    preds = predictions.gather(1, (exits - 1).T).T  # (T, N)
    points = operating_points(exits, preds, predictions[:, -1], labels, costs, confidence)
    return [SweepPoint(v, p) for v, p in zip(values, points, strict=True)]


def fastest_within(points: Sequence[SweepPoint], tolerance: float) -> SweepPoint | None:
    """The highest cost speed-up whose guarded loss is within `tolerance` (ties: more accurate)."""
    ok = [p for p in points if p.point.loss_upper <= tolerance + 1e-12]
    if not ok:
        return None
    return max(ok, key=lambda p: (round(p.point.cost_speedup, 9), p.point.accuracy))


def slowest_reaching(points: Sequence[SweepPoint], speedup: float) -> SweepPoint | None:
    """The most accurate point whose layer speed-up reaches `speedup`."""
    ok = [p for p in points if p.point.layer_speedup >= speedup - 1e-12]
    if not ok:
        return None
    return max(ok, key=lambda p: (p.point.accuracy, -p.point.layer_speedup))
