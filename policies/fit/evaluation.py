"""Offline evaluation: replay every policy over a parameter sweep on one split's cached logits.

Sweeps use parameters that do not look at the evaluated split: global thresholds at quantiles of
the *validation* scores, patience and static layer 1..K, EENet budgets (each fitted on validation),
BEEM's guarded per-exit calibration at several tolerances (fitted on validation, with the served
weighting and pooling). The calibrated operating point of each policy (`manifest["policies"]`) is
replayed through `build_policy` and `replay`, the serving path, and checked against the tolerance
it promised on validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from policies.base import ExitPolicy, PolicyError, probabilities
from policies.beem import BeemPolicy
from policies.entropy import EntropyPolicy
from policies.fit.beem_fit import BeemFitConfig, beem_trace, fit_per_exit, streak_scale
from policies.fit.calibration import (
    CalibrationConfig,
    Split,
    beem_weight_options,
    single_thread,
    static_points,
)
from policies.fit.eenet_fit import fit_eenet
from policies.fit.oracle import ORACLES
from policies.fit.sweep import OperatingPoint, operating_point, sweep_global
from policies.guard import use_guard
from policies.max_softmax import MaxProbPolicy
from policies.patience import PatiencePolicy
from policies.registry import build_policy
from policies.replay import replay, trace

SWEEP_POINTS = 30
BEEM_TOLERANCES = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)
EENET_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class CurvePoint:
    parameter: str  # e.g. "alpha", "tau", "patience", "layer", "budget", "tolerance"
    value: float | None  # None: never exits early
    point: OperatingPoint
    budget_error: float | None = None  # EENet: realised mean cost / budget - 1 on this split

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parameter": self.parameter, "value": self.value,
                               **self.point.to_json()}
        if self.budget_error is not None:
            out["budget_error"] = round(self.budget_error, 6)
        return out


@dataclass(frozen=True)
class PolicyReport:
    name: str
    curve: list[CurvePoint]
    calibrated: CurvePoint | None = None  # the manifest's operating point on this split
    promised_tolerance: float | None = None  # what calibration promised (validation, guarded)
    tolerance: float = 0.005  # for `best`

    @property
    def kept(self) -> bool | None:
        """Whether the calibrated point's loss on this split stayed within its promise."""
        if self.calibrated is None or self.promised_tolerance is None:
            return None
        return self.calibrated.point.loss <= self.promised_tolerance + 1e-12

    @property
    def best(self) -> CurvePoint | None:
        """Highest layer speed-up with loss <= tolerance on this split (hindsight, not fitted)."""
        pts = [p for p in [*self.curve, *([self.calibrated] if self.calibrated else [])]
               if p.point.loss <= self.tolerance + 1e-12]
        return max(pts, key=lambda p: (p.point.layer_speedup, p.point.accuracy), default=None)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {"curve": [p.to_json() for p in self.curve],
                "calibrated": self.calibrated.to_json() if self.calibrated else None,
                "promised_tolerance": self.promised_tolerance, "kept_tolerance": self.kept,
                "best_within_tolerance": best.to_json() if best else None}


@dataclass(frozen=True)
class EvaluationReport:
    split: str
    n: int
    num_exits: int
    last_accuracy: float
    tolerance: float
    costs: dict[str, Any]
    policies: list[PolicyReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "n": self.n, "num_exits": self.num_exits,
                "last_accuracy": round(self.last_accuracy, 6), "tolerance": self.tolerance,
                "costs": self.costs, "policies": {p.name: p.to_json() for p in self.policies}}


def _quantile_values(val_scores: torch.Tensor, points: int) -> list[float | None]:
    """Thresholds at evenly spaced quantiles of validation scores (exits 1..K-1), then never."""
    flat = val_scores[:, :-1].reshape(-1).double()  # (N*(K-1),)
    qs = torch.quantile(flat, torch.linspace(0, 1, points, dtype=torch.float64))  # (points,)
    return [*sorted({float(q) for q in qs}), None]


def threshold_curve(policy: ExitPolicy, parameter: str, val: Split, data: Split,
                    confidence: float, values: Sequence[float | None] | None = None,
                    ) -> list[CurvePoint]:
    """Global-threshold sweep of a memoryless or streak policy traced with no thresholds."""
    if values is None:
        values = _quantile_values(trace(policy, val.logits).scores, SWEEP_POINTS)
    tr = trace(policy, data.logits)
    pts = sweep_global(tr.scores, tr.predictions, data.labels, data.costs, values, confidence)
    return [CurvePoint(parameter, p.value, p.point) for p in pts]


def beem_tolerance_curve(val: Split, data: Split, weights: list[float], weighting: str,
                         cfg: BeemFitConfig) -> list[CurvePoint]:
    """BEEM's guarded per-exit calibration refitted on validation at several tolerances."""
    out = []
    for tol in BEEM_TOLERANCES:
        fit = fit_per_exit(val.logits, val.labels, val.costs, weights, weighting,
                           replace(cfg, tolerance=tol))
        pol = BeemPolicy(data.num_exits, weights, fit.thresholds, fit.reset, weighting)
        out.append(CurvePoint("tolerance", tol, _replay_point(pol, data, cfg.confidence)))
    return out


def beem_normalised_curve(val: Split, data: Split, weights: list[float],
                          confidence: float) -> list[CurvePoint]:
    """BEEM with alpha_k = alpha * W_k (policies.fit.beem_fit.fit_normalised), alpha swept over
    quantiles of the validation S_k / W_k."""
    scale = torch.tensor(streak_scale(weights), dtype=torch.float64).clamp_min(1e-12)  # (K,)
    values = _quantile_values(beem_trace(val.logits, weights, "weighted").scores / scale,
                              SWEEP_POINTS)
    tr = beem_trace(data.logits, weights, "weighted")
    pts = sweep_global(tr.scores / scale, tr.predictions, data.labels, data.costs, values,
                       confidence)
    return [CurvePoint("alpha/W_k", p.value, p.point) for p in pts]


def eenet_curve(val: Split, data: Split, cfg: CalibrationConfig,
                budgets: Sequence[float]) -> list[CurvePoint]:
    """EENet fitted on validation per budget; realised cost on `data` against the budget."""
    first = data.costs.fractions()[0]
    out = []
    for b in [b for b in budgets if first < b <= 1.0]:
        fit = fit_eenet(val.logits, val.labels, val.costs, replace(cfg.eenet, budget=b))
        point = _replay_point(fit.policy, data, cfg.confidence)
        out.append(CurvePoint("budget", b, point, point.cost_fraction / b - 1))
    return out


def _replay_point(policy: ExitPolicy, data: Split, confidence: float) -> OperatingPoint:
    return operating_point(replay(policy, data.logits, data.labels, data.costs), confidence)


def _calibrated(build: str, params: Mapping[str, Any],
                calibrations: Mapping[str, Any], data: Split, confidence: float,
                ) -> tuple[CurvePoint | None, float | None]:
    cal = calibrations.get(build)
    if not isinstance(cal, Mapping):
        return None, None
    pol = build_policy(build, data.num_exits, params, cal)
    point = _replay_point(pol, data, confidence)
    fit = cal.get("fit") or {}
    budget = fit.get("budget") if build == "eenet" else None
    err = point.cost_fraction / float(budget) - 1 if budget else None
    tol = fit.get("tolerance")
    return (CurvePoint("calibrated", None, point, err),
            float(tol) if isinstance(tol, int | float) else None)


Curve = Callable[[], list[CurvePoint]]


def _curves(val: Split, data: Split, cfg: CalibrationConfig, budgets: Sequence[float],
            calibrations: Mapping[str, Any]) -> dict[str, tuple[Curve, str, dict[str, Any]]]:
    """name -> (curve, registry name of its calibrated point, request params of that point)."""
    k, conf = data.num_exits, cfg.confidence
    never: list[float | None] = [None] * k
    weights = beem_weight_options(val)
    beem_cal = calibrations.get("beem") or {}
    served = (beem_cal.get("params") or {}).get("weighting", "cost")
    served = served if served in weights else "cost"
    method = ((beem_cal.get("variants") or {}).get(served) or {}).get("method")
    pooling = "exit" if method == "per-exit" else "cumulative"

    def beem_alpha(w: str) -> Curve:
        return lambda: threshold_curve(BeemPolicy(k, weights[w], never, "weighted", w), "alpha",
                                       val, data, conf)

    return {
        "beem": (lambda: beem_tolerance_curve(val, data, weights[served], served,
                                              replace(cfg.beem(), pooling=pooling)),
                 "beem", {}),
        "beem-c": (beem_alpha("cost"), "beem", {"weighting": "cost"}),
        "beem-a": (beem_alpha("accuracy"), "beem", {"weighting": "accuracy"}),
        "beem-c-normalised": (lambda: beem_normalised_curve(val, data, weights["cost"], conf),
                              "beem", {"weighting": "cost"}),
        "beem-a-normalised": (lambda: beem_normalised_curve(val, data, weights["accuracy"], conf),
                              "beem", {"weighting": "accuracy"}),
        "eenet": (lambda: eenet_curve(val, data, cfg, budgets), "eenet", {}),
        "maxprob": (lambda: threshold_curve(MaxProbPolicy(k, never), "tau", val, data, conf),
                    "maxprob", {}),
        "entropy": (lambda: threshold_curve(EntropyPolicy(k, never), "tau", val, data, conf),
                    "entropy", {}),
        "patience": (lambda: threshold_curve(PatiencePolicy(k, k), "patience", val, data, conf,
                                             [float(p) for p in range(1, k)] + [None]),
                     "patience", {}),
        "static": (lambda: [CurvePoint("layer", p.value, p.point)
                            for p in static_points(data, conf)], "static", {}),
        "none": (lambda: [CurvePoint("-", None, static_points(data, conf)[-1].point)],
                 "none", {}),
    }


def _oracle(name: str, data: Split, confidence: float) -> PolicyReport:
    res = ORACLES[name].replay(data.logits, data.labels, data.costs)
    return PolicyReport(name, [CurvePoint("-", None, operating_point(res, confidence))])


def _report(name: str, val: Split, data: Split, cfg: CalibrationConfig,
            curves: Mapping[str, tuple[Curve, str, dict[str, Any]]],
            calibrations: Mapping[str, Any]) -> PolicyReport:
    if name in ORACLES:
        return _oracle(name, data, cfg.confidence)
    curve, build, params = curves[name]
    cal, promised = _calibrated(build, params, calibrations, data, cfg.confidence)
    return PolicyReport(name, curve(), cal, promised, cfg.tolerance)


def evaluate(val: Split, data: Split, split: str, calibrations: Mapping[str, Any],
             names: Sequence[str] | None = None, config: CalibrationConfig | None = None,
             budgets: Sequence[float] = EENET_BUDGETS) -> EvaluationReport:
    """Sweep every policy (default: all, plus the oracles) on `data`; thresholds from `val`."""
    cfg = config or CalibrationConfig()
    cfg.validate()
    if val.num_exits != data.num_exits:
        raise PolicyError(f"validation has {val.num_exits} exits, {split} has {data.num_exits}")
    curves = _curves(val, data, cfg, budgets, calibrations)
    wanted = list(names) if names else [*curves, *ORACLES]
    unknown = [n for n in wanted if n not in curves and n not in ORACLES]
    if unknown:
        raise PolicyError(f"cannot evaluate {unknown}; known: {[*curves, *ORACLES]}")
    with single_thread(), use_guard(cfg.guard):
        reports = [_report(name, val, data, cfg, curves, calibrations) for name in wanted]
    final = probabilities(data.logits[:, -1]).argmax(dim=-1)  # (N,)
    return EvaluationReport(
        split=split, n=int(data.labels.shape[0]), num_exits=data.num_exits,
        last_accuracy=float((final == data.labels).double().mean()), tolerance=cfg.tolerance,
        costs={"cumulative": list(data.costs.cumulative), "unit": data.costs.unit,
               "source": data.costs.source},
        policies=reports)


def eenet_budget_summary(report: EvaluationReport) -> dict[str, float] | None:
    """Largest and mean |realised cost / budget - 1| over the EENet sweep on this split."""
    rep = next((p for p in report.policies if p.name == "eenet"), None)
    errs = [abs(p.budget_error) for p in (rep.curve if rep else []) if p.budget_error is not None]
    if not errs:
        return None
    return {"max_abs": max(errs), "mean_abs": sum(errs) / len(errs), "budgets": len(errs)}

