"""Why BEEM ranks rows better or worse than max-prob on one artifact: streaks, scores, sweeps.

On a split's cached exit logits (no fitting on that split), per exit k < K:
* agree: share of rows whose argmax equals exit k-1's (k > 1); the streak BEEM accumulates;
* acc|agree, acc|break: accuracy of exit k on rows that agree / disagree with exit k-1;
* AUC of each score for "exit k already gives the last exit's answer" (the rows a no-loss exit
  may take): max-prob C_k, BEEM S_k (BEEM-C weights, reset w_k C_k), and S_k / W_k;
and, per score family, the best layer speed-up of one global threshold at <= tolerance loss on
that split (hindsight: what the ranking allows, before any calibration margin).

Sharpness (`--powers`): BEEM-C with weights (cumcost_k / cumcost_K)**g and the normalised alpha,
per power g: the AUCs, the hindsight best, and the guarded fit on validation
(`policies.fit.beem_fit.fit_normalised`, the calibration's candidate) replayed on the split.

    python -m bench.studies.beem artifacts/text-default --split test \\
        --json docs/figures/beem_diagnostics_test.json
    python -m bench.studies.beem artifacts/text-default --split val \\
        --json docs/figures/beem_diagnostics_val.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from bench.harness import record
from bench.studies._common import CACHED, load_splits, one_thread
from policies.base import probabilities
from policies.beem import accuracy_weights, cost_weights
from policies.fit.beem_fit import beem_trace, exit_accuracies, fit_normalised, streak_scale
from policies.fit.calibration import CalibrationConfig, Split
from policies.fit.sweep import (
    candidate_thresholds,
    exits_for,
    operating_point,
    result_for,
    sweep_global,
)

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive row outscores a random negative one (ties: half)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = torch.empty_like(score)
    order = torch.argsort(score, stable=True)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=score.dtype)
    for v in torch.unique(score):  # average ranks over ties
        tie = score == v
        if int(tie.sum()) > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[positive].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def scores(data: Split, val: Split) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (scores (N, K), predictions (N, K)); BEEM-A weights from validation accuracy."""
    k = data.num_exits
    probs = probabilities(data.logits)  # (N, K, C)
    conf, pred = probs.max(dim=-1)  # (N, K), (N, K)
    out = {"maxprob": (conf.double(), pred)}
    weights = {"beem-c": cost_weights(data.costs.cumulative),
               "beem-a": accuracy_weights(exit_accuracies(val.logits, val.labels)),
               "beem-uniform": [1.0] * k}
    for name, w in weights.items():
        for reset in ("weighted", "zero"):
            tr = beem_trace(data.logits, w, reset)
            tag = name if reset == "weighted" else f"{name}-reset0"
            out[tag] = (tr.scores, tr.predictions)
            scale = torch.tensor(streak_scale(w), dtype=torch.float64)  # (K,)
            out[f"{tag}-normalised"] = (tr.scores / scale, tr.predictions)
    return out


def best_speedup(s: torch.Tensor, pred: torch.Tensor, data: Split,
                 tolerance: float) -> dict[str, Any]:
    values: list[float | None] = [*candidate_thresholds(s[:, :-1], 512), None]
    pts = sweep_global(s, pred, data.labels, data.costs, values, 0.8)
    ok = [p for p in pts if p.point.loss <= tolerance + 1e-12]
    best = max(ok, key=lambda p: (p.point.layer_speedup, p.point.accuracy))
    return {"threshold": best.value, "layer_x": round(best.point.layer_speedup, 4),
            "loss_pt": round(100 * best.point.loss, 3)}


def sharpness(data: Split, val: Split, powers: list[float], safe: torch.Tensor,
              tolerance: float) -> list[dict[str, Any]]:
    """Per power g: AUCs and hindsight of S_k / W_k on `data`, and the guarded validation fit
    of the normalised alpha replayed on `data`."""
    cfg = CalibrationConfig(tolerance=tolerance).beem()
    rows = []
    for g in powers:
        w = cost_weights(val.costs.cumulative, g)
        tr = beem_trace(data.logits, w, "weighted")
        norm = tr.scores / torch.tensor(streak_scale(w), dtype=torch.float64)  # (N, K)
        fit = fit_normalised(val.logits, val.labels, val.costs, w, "cost", cfg)
        res = result_for(exits_for(tr.scores, fit.thresholds), tr.predictions, data.labels,
                         data.costs)
        held = operating_point(res, cfg.confidence)
        rows.append({"power": g,
                     "auc": [round(auc(norm[:, j], safe[:, j]), 4)
                             for j in range(data.num_exits - 1)],
                     "hindsight": best_speedup(norm, tr.predictions, data, tolerance),
                     "val_fit_layer_x": round(fit.point.layer_speedup, 4),
                     "layer_x": round(held.layer_speedup, 4),
                     "loss_pt": round(100 * held.loss, 3)})
    return rows


def streaks(data: Split) -> list[dict[str, float]]:
    pred = probabilities(data.logits).argmax(dim=-1)  # (N, K)
    right = pred == data.labels.unsqueeze(1)  # (N, K)
    rows = []
    for j in range(1, data.num_exits - 1):
        agree = pred[:, j] == pred[:, j - 1]  # (N,)
        rows.append({"exit": j + 1, "agree": float(agree.double().mean()),
                     "acc_agree": float(right[agree, j].double().mean()),
                     "acc_break": float(right[~agree, j].double().mean()) if (~agree).any()
                     else float("nan")})
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.beem", description=DESCRIPTION)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--powers", type=float, nargs="*", default=[1, 2, 4, 8, 16],
                    help="BEEM-C weight powers for the sharpness table")
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    one_thread()
    _, splits = load_splits(args.artifact, *dict.fromkeys(["val", args.split]))
    val, data = splits[0], splits[-1]
    fams = scores(data, val)
    pred = probabilities(data.logits).argmax(dim=-1)  # (N, K)
    safe = pred == pred[:, -1:]  # (N, K) exit k already gives the last exit's answer
    aucs = {name: [round(auc(s[:, j], safe[:, j]), 4) for j in range(data.num_exits - 1)]
            for name, (s, _) in fams.items()}
    best = {name: best_speedup(s, p, data, args.tolerance) for name, (s, p) in fams.items()}
    sharp = sharpness(data, val, args.powers, safe, args.tolerance)
    out: dict[str, Any] = {
        "artifact": str(args.artifact), "split": args.split, "tolerance": args.tolerance,
        "streaks": streaks(data), "auc_same_as_last": aucs, "best_global": best,
        "sharpness": sharp}
    print("exit  agree  acc|agree  acc|break")
    for r in out["streaks"]:
        print(f"{r['exit']:>4}  {r['agree']:.3f}  {r['acc_agree']:.3f}      {r['acc_break']:.3f}")
    print(f"{'score':<28} {'AUC(same as last) exits 1..K-1':<40} best layer x @<=tol")
    for name in fams:
        b = best[name]
        print(f"{name:<28} {' '.join(f'{a:.3f}' for a in aucs[name]):<40} {b['layer_x']:.2f} "
              f"({b['loss_pt']:+.2f} pt)")
    print(f"BEEM-C weights cost^g, normalised alpha: AUC exits 1..K-1 | hindsight | "
          f"guarded val fit -> {args.split}")
    for r in sharp:
        h = r["hindsight"]
        print(f"g={r['power']:<5g} {' '.join(f'{a:.3f}' for a in r['auc'])} | "
              f"{h['layer_x']:.2f} | {r['val_fit_layer_x']:.2f}x -> {r['layer_x']:.2f}x "
              f"({r['loss_pt']:+.2f} pt)")
    record("studies.beem", args.json, out, **CACHED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
