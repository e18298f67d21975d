"""Fit every policy on an artifact's cached validation logits and store the fits in its manifest.

`calibrate_artifact(root)` (a captioner: `calibrate_captioner(root)`, the per-token policies)
reads `exit_logits.safetensors` (validation split) and the measured per-layer latency
(`policies.costs.manifest_costs`), fits each policy, and writes

    manifest["policies"][name] = {"params": {...}, "operating_point": {...}, "fit": {...}}
    manifest["default_policy"] = the calibrated policy with the highest guarded validation cost
                                 speed-up (`choose_default`; BEEM on a tie)

The engine passes `manifest["policies"][name]` to `build_policy` as `calibration`; the policies read
`calibration["params"]` (BEEM also `calibration["variants"]`, the fit of each weighting).

Default operating point of every policy: the fastest setting (cost-weighted speed-up) whose
*guarded* validation accuracy loss against the last exit is within `tolerance` (0.5 points), the
guard being an upper confidence bound at `confidence` (policies.guard). Nothing here is fitted on
the test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models.artifact import load_exit_logits, read_manifest, update_manifest, write_manifest
from models.environment import stamp
from policies.base import ExitPolicy, PolicyError, check_int, check_number, probabilities
from policies.beem import accuracy_weights, cost_weights
from policies.costs import ExitCosts, manifest_costs
from policies.eenet import EENetPolicy
from policies.entropy import EntropyPolicy
from policies.fit.beem_fit import (
    POOLINGS,
    BeemFit,
    BeemFitConfig,
    best_fit,
    choose_min_support,
    exit_accuracies,
    fit_global,
    fit_normalised,
    fit_per_exit,
)
from policies.fit.eenet_fit import EENetFit, EENetFitConfig, fit_eenet, fit_offset, hard_exits
from policies.fit.sweep import (
    OperatingPoint,
    SweepPoint,
    candidate_thresholds,
    fastest_within,
    operating_points,
    settle,
    sweep_global,
)
from policies.fit.sweep import operating_point as summarise
from policies.guard import DEFAULT_GUARD, check_confidence, check_guard, use_guard
from policies.max_softmax import MaxProbPolicy
from policies.names import (
    CAPTION_DEFAULT_POLICY,
    CAPTION_POLICIES,
    DEFAULT_POLICY,
    POLICY_NAMES,
    PolicyName,
    is_policy_name,
)
from policies.patience import PatiencePolicy
from policies.replay import replay, trace

DEFAULT_CANDIDATES = ("beem", "maxprob", "entropy", "eenet", "patience")
FIXED_SUPPORT = 30  # the support floor when none is chosen by the data (global fits ignore it)


@dataclass(frozen=True)
class CalibrationConfig:
    tolerance: float = 0.005  # allowed validation accuracy loss vs the last exit (0.005 = 0.5 pt)
    confidence: float = 0.8  # one-sided confidence of the guard on that loss
    guard: str = DEFAULT_GUARD  # "exact" (Bonferroni CP) or "score" (joint Tango bound)
    min_support: int | None = None  # BEEM per-exit support floor (rows); None: chosen by data
    reference: str = "paired"  # BEEM per-exit target: "paired" or "overall" (paper p_L)
    eenet_budget: float | None = None  # fixed EENet budget (fraction of full cost); None: guarded
    beem_target_speedup: float | None = None  # BEEM: global alpha for this layer speed-up instead
    eenet: EENetFitConfig = field(default_factory=EENetFitConfig)

    def validate(self) -> None:
        check_number("tolerance", self.tolerance, 0.0, 1.0)
        check_confidence(self.confidence)
        check_guard(self.guard)
        if self.min_support is not None:
            check_int("min_support", self.min_support, 1, 10**9)
        if self.beem_target_speedup is not None:
            check_number("beem: target_speedup", self.beem_target_speedup, 1.0, 1e6)
        self.beem().validate()

    def beem(self, reset: str = "weighted") -> BeemFitConfig:
        floor = FIXED_SUPPORT if self.min_support is None else self.min_support
        return BeemFitConfig(self.tolerance, self.confidence, floor, self.reference, reset)


@dataclass(frozen=True)
class Split:
    """Cached logits of one split with the costs of its exits."""

    logits: torch.Tensor  # (N, K, C)
    labels: torch.Tensor  # (N,)
    costs: ExitCosts

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[1])


@dataclass(frozen=True)
class PolicyCalibration:
    """One policy's fitted parameters and what they do on validation."""

    name: str
    params: dict[str, Any]
    point: OperatingPoint
    fit: dict[str, Any]
    variants: dict[str, Any] | None = None

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params,
                               "operating_point": {"split": "val", **self.point.to_json()},
                               "fit": self.fit}
        if self.variants is not None:
            out["variants"] = self.variants
        return out


GUARD_TEXT = {
    "score": "Tango score upper bound (half-row continuity correction) on rows lost minus rows "
             "gained vs the last exit",
    "exact": "Clopper-Pearson upper bound on rows lost vs the last exit, minus the lower bound "
             "on rows gained (Bonferroni)",
}


def _guard_fit(cfg: CalibrationConfig, method: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "split": "val", "tolerance": cfg.tolerance,
            "confidence": cfg.confidence, "guard_method": cfg.guard,
            "guard": GUARD_TEXT[cfg.guard], **extra}


def _pick(points: list[SweepPoint], cfg: CalibrationConfig) -> SweepPoint:
    best = fastest_within(points, cfg.tolerance)
    if best is None:  # cannot happen when the sweep includes full depth (loss 0)
        raise PolicyError("no setting meets the tolerance on validation")
    return best


def _threshold_policy(name: str, policy: ExitPolicy, data: Split,
                      cfg: CalibrationConfig) -> PolicyCalibration:
    """Global-threshold baselines: sweep distinct validation scores, keep the fastest guarded."""
    tr = trace(policy, data.logits)
    values: list[float | None] = [*candidate_thresholds(tr.scores[:, :-1]), None]
    best = _pick(sweep_global(tr.scores, tr.predictions, data.labels, data.costs, values,
                              cfg.confidence), cfg)
    value = settle(best.value, tr.scores[:, :-1])
    params = {"threshold": value} if value is not None else \
        {"thresholds": [None] * data.num_exits}
    return PolicyCalibration(name, params, best.point,
                             _guard_fit(cfg, "global threshold sweep", candidates=len(values)))


def fit_maxprob(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    return _threshold_policy("maxprob", MaxProbPolicy(data.num_exits, [None] * data.num_exits),
                             data, cfg)


def fit_entropy(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    return _threshold_policy("entropy", EntropyPolicy(data.num_exits, [None] * data.num_exits),
                             data, cfg)


def fit_patience(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    """PABEE: the smallest patience (fastest) whose guarded loss is within tolerance."""
    k = data.num_exits
    tr = trace(PatiencePolicy(k, k), data.logits)  # scores = agreement counter
    values: list[float | None] = [float(p) for p in range(1, k)]
    points = sweep_global(tr.scores, tr.predictions, data.labels, data.costs, [*values, None],
                          cfg.confidence)
    best = _pick(points, cfg)
    patience = k if best.value is None else int(best.value)
    return PolicyCalibration("patience", {"patience": patience}, best.point,
                             _guard_fit(cfg, "patience sweep 1..K"))


def static_points(data: Split, confidence: float) -> list[SweepPoint]:
    """Every row at layer l, for l = 1..K."""
    n, k = data.labels.shape[0], data.num_exits
    preds = probabilities(data.logits).argmax(dim=-1)  # (N, K)
    exits = torch.arange(1, k + 1).unsqueeze(1).expand(k, n)  # (K, N)
    pts = operating_points(exits, preds.T, preds[:, -1], data.labels, data.costs, confidence)
    return [SweepPoint(float(layer), p) for layer, p in zip(range(1, k + 1), pts, strict=True)]


def fit_static(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    best = _pick(static_points(data, cfg.confidence), cfg)
    return PolicyCalibration("static", {"layer": int(best.value or data.num_exits)}, best.point,
                             _guard_fit(cfg, "layer sweep 1..K"))


def fit_none(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    return PolicyCalibration("none", {}, static_points(data, cfg.confidence)[-1].point,
                             {"method": "full depth", "split": "val"})


# ---- BEEM ------------------------------------------------------------------------------------
def beem_weight_options(data: Split) -> dict[str, list[float]]:
    """BEEM-C weights from the (measured) cumulative costs, BEEM-A from validation accuracy."""
    return {"cost": cost_weights(data.costs.cumulative),
            "accuracy": accuracy_weights(exit_accuracies(data.logits, data.labels))}


def _beem_record(fit: BeemFit) -> dict[str, Any]:
    rec: dict[str, Any] = {"method": fit.method, "weights": fit.weights,
                           "thresholds": fit.thresholds,
                           "val_layer_speedup": round(fit.point.layer_speedup, 4),
                           "val_loss": round(fit.point.loss, 6),
                           "val_loss_upper": round(fit.point.loss_upper, 6)}
    if fit.alpha is not None:
        rec["alpha"] = fit.alpha
    if fit.power != 1.0:
        rec["power"] = fit.power
    if fit.exits:
        rec["per_exit"] = [{"exit": e.exit, "in_flight": e.in_flight, "support": e.support,
                            "errors": e.errors, "lost": e.lost, "gained": e.gained}
                           for e in fit.exits]
    return rec


# sharper BEEM-C weightings tried with the normalised alpha (docs/benchmarks/accuracy.md, "BEEM":
# on the MiniLM builds every step from 1 towards 16 raised the guarded validation speed-up)
BEEM_POWERS = (2.0, 4.0, 8.0, 16.0)


def fit_sharpened(data: Split, power: float, cfg: BeemFitConfig) -> BeemFit:
    """The normalised-alpha fit of BEEM-C with weights (cumcost_k / cumcost_K)**power."""
    weights = cost_weights(data.costs.cumulative, power)
    fit = fit_normalised(data.logits, data.labels, data.costs, weights, "cost", cfg)
    return replace(fit, power=power)


def fit_beem(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    """Both weightings x (guarded per-exit thresholds, each exit's rows alone or pooled with the
    rows that left earlier; guarded global alpha; guarded alpha normalised by the streak scale,
    for BEEM-C also with the sharper weights of `BEEM_POWERS`); keep the fastest on validation.
    The best fit of each weighting is stored as its variant so a request can pick a weighting."""
    if cfg.beem_target_speedup is not None:
        return fit_beem_for_speedup(data, cfg, cfg.beem_target_speedup)
    bcfg = cfg.beem()
    fits: dict[str, BeemFit] = {}
    tried: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    for weighting, weights in beem_weight_options(data).items():
        cands = []
        for pooling in POOLINGS:
            pcfg = replace(bcfg, pooling=pooling)
            if cfg.min_support is None:
                choice = choose_min_support(data.logits, data.labels, data.costs, weights, pcfg)
                pcfg = replace(pcfg, min_support=choice.min_support)
                floors[f"{weighting}/{pooling}"] = {"chosen": choice.min_support,
                                                    "trials": choice.trials}
            cands.append(fit_per_exit(data.logits, data.labels, data.costs, weights, weighting,
                                      pcfg))
        cands.append(fit_global(data.logits, data.labels, data.costs, weights, weighting, bcfg))
        cands.append(fit_normalised(data.logits, data.labels, data.costs, weights, weighting,
                                    bcfg))
        if weighting == "cost":
            cands += [fit_sharpened(data, g, bcfg) for g in BEEM_POWERS]
        tried += [{"weighting": weighting, **_beem_record(f)} for f in cands]
        fits[weighting] = best_fit(cands, cfg.tolerance)
    chosen = best_fit(list(fits.values()), cfg.tolerance)
    return _beem_calibration(chosen, fits, cfg, tried, support_floors=floors)


def fit_beem_for_speedup(data: Split, cfg: CalibrationConfig,
                         speedup: float) -> PolicyCalibration:
    """One global alpha per weighting, the most accurate reaching `speedup` (layer speed-up) on
    validation; the more accurate weighting is served. No accuracy guard: the speed is the goal."""
    bcfg = cfg.beem()
    fits = {w: fit_global(data.logits, data.labels, data.costs, weights, w, bcfg, speedup)
            for w, weights in beem_weight_options(data).items()}
    tried = [{"weighting": w, **_beem_record(f)} for w, f in fits.items()]
    chosen = max(fits.values(), key=lambda f: (f.point.accuracy, f.point.layer_speedup))
    return _beem_calibration(chosen, fits, cfg, tried, target_speedup=speedup)


def _beem_calibration(chosen: BeemFit, fits: dict[str, BeemFit], cfg: CalibrationConfig,
                      tried: list[dict[str, Any]], **extra: Any) -> PolicyCalibration:
    label = "BEEM-A" if chosen.weighting == "accuracy" else "BEEM-C"
    if chosen.power != 1.0:
        label += f", weights cost^{chosen.power:g}"
    floor = "chosen by cross-fitting" if cfg.min_support is None else cfg.min_support
    fit = _guard_fit(cfg, f"{chosen.method} thresholds, {label}", min_support=floor,
                     reference=cfg.reference, candidates=tried, **extra)
    variants = {w: {"weights": f.weights, "thresholds": f.thresholds, "method": f.method,
                    "power": f.power} for w, f in fits.items()}
    return PolicyCalibration("beem", chosen.params(), chosen.point, fit, variants)


# ---- EENet -----------------------------------------------------------------------------------
def _eenet_record(fit: EENetFit, seconds: float) -> dict[str, Any]:
    return {"budget": fit.policy.budget, "val_cost": round(fit.val_cost, 6),
            "val_expected_cost": round(fit.val_expected_cost, 6),
            "shares": [round(s, 4) for s in fit.shares], "offset": fit.offset,
            "seconds": round(seconds, 2)}


def _eenet_point(policy: EENetPolicy, data: Split, confidence: float) -> OperatingPoint:
    return summarise(replay(policy, data.logits, data.labels, data.costs), confidence)


def eenet_budget_grid(data: Split, step: float = 0.025) -> list[float]:
    """Budgets (fractions of full cost) from just above the first exit's cost up to 1."""
    first = data.costs.fractions()[0]
    n = int((1.0 - first) / step)
    return [round(first + step * (i + 1), 6) for i in range(n)] + [1.0]


@dataclass(frozen=True)
class Retarget:
    """A fitted EENet's thresholds moved by one global offset to meet another budget."""

    budget: float
    offset: float
    point: OperatingPoint


def retarget(fit: EENetFit, data: Split, cfg: CalibrationConfig) -> Retarget:
    """The smallest grid budget whose guarded loss is within tolerance, keeping `fit`'s scores
    and moving its thresholds by a global offset (cheap, no refit). Budget 1 always passes."""
    q = trace(fit.policy, data.logits).scores  # (N, K)
    preds = probabilities(data.logits).argmax(dim=-1)  # (N, K)
    cost = torch.tensor(data.costs.fractions(), dtype=torch.float64)  # (K,)
    grid = eenet_budget_grid(data)
    offsets = [fit_offset(q, fit.policy.thresholds, cost, b) for b in grid]
    exits = torch.stack([hard_exits(q, fit.policy.thresholds, o) for o in offsets])  # (T, N)
    picked = preds.gather(1, (exits - 1).T).T  # (T, N)
    points = operating_points(exits, picked, preds[:, -1], data.labels, data.costs,
                              cfg.confidence)
    for b, o, p in zip(grid, offsets, points, strict=True):
        if p.loss_upper <= cfg.tolerance + 1e-12:
            return Retarget(b, o, p)
    return Retarget(grid[-1], offsets[-1], points[-1])


def shifted(fit: EENetFit, move: Retarget) -> EENetPolicy:
    """`fit`'s policy with every threshold of exits 1..K-1 raised by `move.offset`."""
    pol = fit.policy
    thresholds = [None if t is None else t + move.offset for t in pol.thresholds]
    return EENetPolicy(pol.num_exits, pol.a, pol.b, thresholds, move.budget)


def fit_eenet_policy(data: Split, cfg: CalibrationConfig) -> PolicyCalibration:
    """EENet at a given budget, or at the smallest guarded one.

    Guarded: a first fit at half the full cost locates the budget by retargeting; fit there; if
    the guard fails, retarget that fit and fit once more; if it still fails, keep the last fit
    with its thresholds retargeted (its realised validation cost becomes the budget).
    """
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def run(budget: float) -> tuple[EENetFit, OperatingPoint]:
        start = time.perf_counter()
        f = fit_eenet(data.logits, data.labels, data.costs, replace(cfg.eenet, budget=budget))
        p = _eenet_point(f.policy, data, cfg.confidence)
        runs.append({**_eenet_record(f, time.perf_counter() - start),
                     "val_loss_upper": round(p.loss_upper, 6)})
        return f, p

    def passes(p: OperatingPoint) -> bool:
        return p.loss_upper <= cfg.tolerance + 1e-12

    if cfg.eenet_budget is not None:
        fit, point = run(cfg.eenet_budget)
        policy, method = fit.policy, "fixed budget"
    else:
        first, _ = run(max(0.5, eenet_budget_grid(data)[0]))
        fit, point = run(retarget(first, data, cfg).budget)
        if not passes(point):
            fit, point = run(retarget(fit, data, cfg).budget)
        policy, method = fit.policy, "smallest guarded budget (retarget, then refit)"
        if not passes(point):
            move = retarget(fit, data, cfg)
            policy, point = shifted(fit, move), move.point
            method = "smallest guarded budget (retargeted last fit)"
    extra = {"budget": policy.budget, "runs": runs,
             "seconds": round(time.perf_counter() - t0, 2),
             "config": {k: v for k, v in vars(cfg.eenet).items() if k != "budget"}}
    return PolicyCalibration("eenet", policy.params(), point, _guard_fit(cfg, method, **extra))


FITTERS: dict[PolicyName, Callable[[Split, CalibrationConfig], PolicyCalibration]] = {
    "none": fit_none, "static": fit_static, "maxprob": fit_maxprob, "entropy": fit_entropy,
    "patience": fit_patience, "beem": fit_beem, "eenet": fit_eenet_policy,
}


@contextmanager
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread: fitting works on tiny tensors, where more threads contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def calibrate(data: Split, names: Iterable[str] | None = None,
              config: CalibrationConfig | None = None) -> dict[str, PolicyCalibration]:
    """Fit the named policies (default: all) on validation data; no I/O."""
    cfg = config or CalibrationConfig()
    cfg.validate()
    wanted = list(names) if names else list(POLICY_NAMES)
    chosen = [n for n in wanted if is_policy_name(n)]
    unknown = [n for n in wanted if not is_policy_name(n)]
    if unknown:
        raise PolicyError(f"cannot calibrate {unknown}; known: {list(POLICY_NAMES)}")
    if data.logits.dim() != 3 or data.labels.shape != data.logits.shape[:1]:
        raise PolicyError(f"validation logits (N, K, C) and labels (N,) needed, got "
                          f"{tuple(data.logits.shape)} and {tuple(data.labels.shape)}")
    if not bool(torch.isfinite(data.logits).all()):
        raise PolicyError("validation logits contain NaN or inf")
    with single_thread(), use_guard(cfg.guard):
        return {name: FITTERS[name](data, cfg) for name in chosen}


def load_split(root: str | Path, split: str, manifest: Mapping[str, Any]) -> Split:
    cached = load_exit_logits(root, split)
    k = cached.num_exits
    return Split(cached.logits.double(), cached.labels.long(), manifest_costs(manifest, k))


def calibrate_artifact(root: str | Path, policies: Iterable[str] | None = None,
                       config: CalibrationConfig | None = None) -> dict[str, Any]:
    """Fit policies on `root`'s cached validation logits and write them into its manifest.

    Returns the updated manifest. Policies not named keep their previous calibration.
    """
    manifest = read_manifest(root)
    data = load_split(root, "val", manifest)
    fits = calibrate(data, policies, config)
    stored = dict(manifest.get("policies") or {})
    stored.update({name: fit.to_manifest() for name, fit in fits.items()})
    default = choose_default(stored) or manifest.get("default_policy", "none")
    return update_manifest(root, policies=stored, default_policy=default,
                           calibrated_on={"backend": "torch", "precision": "fp32"},
                           environment=stamp(dict(manifest), "calibrate")["environment"])


def calibrate_captioner(root: str | Path, config: CalibrationConfig | None = None
                        ) -> dict[str, Any]:
    """Fit the per-token policies (`CAPTION_POLICIES`) on a captioner's cached validation
    logits; `CAPTION_DEFAULT_POLICY` becomes the default when it fits (else the artifact keeps
    its default). Returns the updated manifest."""
    calibrate_artifact(root, CAPTION_POLICIES, config)
    manifest = read_manifest(root, verify=False)
    if CAPTION_DEFAULT_POLICY in (manifest.get("policies") or {}):
        manifest["default_policy"] = CAPTION_DEFAULT_POLICY
        write_manifest(Path(root), manifest, rehash=False)
    return manifest


def choose_default(stored: Mapping[str, Any]) -> str | None:
    """The served default: among calibrated early-exit policies whose guarded validation loss
    is within their tolerance, the highest validation cost speed-up; BEEM wins ties. Chosen on
    validation only. None when no such policy is calibrated."""
    best: tuple[float, bool, str] | None = None
    for name in DEFAULT_CANDIDATES:
        cal = stored.get(name)
        if not isinstance(cal, Mapping):
            continue
        point, fit = cal.get("operating_point") or {}, cal.get("fit") or {}
        tol, upper, speed = (fit.get("tolerance"), point.get("loss_upper"),
                             point.get("cost_speedup"))
        if not (isinstance(tol, int | float) and isinstance(upper, int | float)
                and isinstance(speed, int | float)) or upper > tol + 1e-9:
            continue
        key = (round(float(speed), 6), name == DEFAULT_POLICY, name)
        best = key if best is None or key > best else best
    return None if best is None else best[2]
