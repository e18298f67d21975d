"""Does the calibrated promise hold on rows it was not fitted on? Validation halves and test.

For each of R random halvings of the validation split (seeded): calibrate the policies on one
half (`policies.fit.calibration.calibrate`, the same fit `eeserve calibrate` runs), replay the
fitted parameters on the other half through `build_policy` + `replay` (the serving path), and
record the held-out accuracy loss against the last exit and the layer speed-up. The promise is
broken on a halving when the held-out loss exceeds the tolerance. Guard methods are run side by
side on the same halvings. With `--test`, also fit on the whole validation split and score on
test (the split the README quotes).

    python -m bench.studies.guard_halves artifacts/text-default --guards score exact \\
        --policies maxprob beem --rounds 20 --test --json docs/figures/guard_halves.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.harness import record
from bench.studies._common import CACHED, broken, held_out, load_splits, one_thread, subset
from policies.fit.calibration import CalibrationConfig, Split, calibrate

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def one_round(val: Split, rows_fit: torch.Tensor, rows_out: torch.Tensor, names: list[str],
              cfg: CalibrationConfig) -> dict[str, dict[str, float]]:
    fits = calibrate(subset(val, rows_fit), names, cfg)
    return {n: held_out(n, f.to_manifest(), subset(val, rows_out)) for n, f in fits.items()}


def summary(rows: list[dict[str, float]], tolerance_pt: float) -> dict[str, Any]:
    losses = [r["loss_pt"] for r in rows]
    return {"rounds": len(rows), "broken": broken(losses, tolerance_pt),
            "median_loss_pt": statistics.median(losses), "max_loss_pt": max(losses),
            "median_layer_x": statistics.median(r["layer_x"] for r in rows),
            "median_cost_x": statistics.median(r["cost_x"] for r in rows)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.guard_halves",
                                 description=DESCRIPTION)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--policies", nargs="+", default=["maxprob", "beem"])
    ap.add_argument("--guards", nargs="+", default=["score", "exact"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--confidence", type=float, default=0.8)
    ap.add_argument("--test", action="store_true", help="also fit on all of val, score on test")
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    one_thread()
    _, (val, *test) = load_splits(args.artifact, "val", *(["test"] if args.test else []))
    n = val.labels.shape[0]
    base = CalibrationConfig(tolerance=args.tolerance, confidence=args.confidence)
    per: dict[str, dict[str, list[dict[str, float]]]] = {
        g: {p: [] for p in args.policies} for g in args.guards}
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for r in range(args.rounds):
        perm = torch.randperm(n, generator=gen)
        fit_rows, out_rows = perm[: n // 2], perm[n // 2:]
        for g in args.guards:  # interleaved: every guard sees the same halving
            for name, res in one_round(val, fit_rows, out_rows, args.policies,
                                       replace(base, guard=g)).items():
                per[g][name].append(res)
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    tol_pt = 100 * args.tolerance
    out: dict[str, Any] = {
        "artifact": str(args.artifact), "rounds": args.rounds, "seed": args.seed,
        "tolerance_pt": tol_pt, "confidence": args.confidence, "val_rows": n,
        "halves": {g: {p: summary(v, tol_pt) for p, v in d.items()} for g, d in per.items()},
        "halves_rounds": per}
    if args.test:
        out["test"] = {g: {n_: held_out(n_, f.to_manifest(), test[0]) for n_, f in
                           calibrate(val, args.policies, replace(base, guard=g)).items()}
                       for g in args.guards}
    print(f"{'guard':<6} {'policy':<8} {'broken/R':>9} {'med loss pt':>11} {'max loss pt':>11} "
          f"{'med layer x':>11}" + ("  test: loss pt / layer x" if args.test else ""))
    for g, d in out["halves"].items():
        for p, s in d.items():
            line = (f"{g:<6} {p:<8} {s['broken']:>4}/{s['rounds']:<4} {s['median_loss_pt']:>11.2f} "
                    f"{s['max_loss_pt']:>11.2f} {s['median_layer_x']:>11.2f}")
            if args.test:
                t = out["test"][g][p]
                line += f"  {t['loss_pt']:+.2f} / {t['layer_x']:.2f}"
            print(line)
    record("studies.guard_halves", args.json, out, **CACHED, guards=args.guards)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
