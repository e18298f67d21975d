"""What more calibration rows buy: fits on validation subsets of several sizes, replayed on test.

For each size n (rows of the validation split), R seeded random subsets of n rows (one fit when
n is the whole split): calibrate the policies on the subset (`policies.fit.calibration.calibrate`,
what `eeserve calibrate` runs) and replay the fitted parameters on test through `build_policy` +
`replay` (the serving path). Per size and policy: the median guarded validation speed-up, the
median test layer speed-up and loss, and how many fits broke the promise on test. The model is
the same throughout, so the sizes differ only in the calibration data (build the model with
`eeserve train text-default --set val_fraction=0.2` to have 2,113 validation rows).

    python -m bench.studies.calibration_rows artifacts/td-v20-s42 --sizes 528 1057 2113 \\
        --rounds 10 --json docs/figures/calibration_rows_v20.json

Nothing is fitted on test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import record
from bench.studies._common import CACHED, broken, held_out, load_splits, one_thread, subset
from policies.fit.calibration import CalibrationConfig, Split, calibrate

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def fits_of_size(val: Split, test: Split, n: int, rounds: int, names: list[str],
                 cfg: CalibrationConfig, seed: int) -> dict[str, list[dict[str, float]]]:
    """Per policy: one record per fit on n validation rows (val speed-up, test loss/speed-up)."""
    total = val.labels.shape[0]
    gen = torch.Generator().manual_seed(seed + n)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(1 if n >= total else rounds):
        rows = torch.arange(total) if n >= total else torch.randperm(total, generator=gen)[:n]
        for name, fit in calibrate(subset(val, rows), names, cfg).items():
            out[name].append({"val_layer_x": fit.point.layer_speedup,
                              **held_out(name, fit.to_manifest(), test)})
    return out


def summarise(recs: list[dict[str, float]], tolerance_pt: float) -> dict[str, float]:
    med = statistics.median
    return {"fits": len(recs), "val_layer_x": round(med(r["val_layer_x"] for r in recs), 3),
            "test_layer_x": round(med(r["layer_x"] for r in recs), 3),
            "test_loss_pt": round(med(r["loss_pt"] for r in recs), 3),
            "test_max_loss_pt": round(max(r["loss_pt"] for r in recs), 3),
            "test_broken": broken((r["loss_pt"] for r in recs), tolerance_pt)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.calibration_rows",
                                 description=DESCRIPTION)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[528, 1057, 2113])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--policies", nargs="+", default=["maxprob", "beem", "eenet"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    one_thread()
    _, (val, test) = load_splits(args.artifact, "val", "test")
    cfg = CalibrationConfig()
    tol = 100 * cfg.tolerance
    start = time.perf_counter()
    table: dict[str, dict[str, Any]] = {}
    print(f"{'rows':>5} {'policy':<8} {'fits':>4} {'val x':>6} {'test x':>6} {'loss pt':>7} "
          f"{'max pt':>6} broken")
    for n in args.sizes:
        recs = fits_of_size(val, test, n, args.rounds, args.policies, cfg, args.seed)
        table[str(n)] = {name: summarise(r, tol) for name, r in recs.items()}
        for name, s in table[str(n)].items():
            print(f"{min(n, val.labels.shape[0]):>5} {name:<8} {s['fits']:>4} "
                  f"{s['val_layer_x']:>6.2f} {s['test_layer_x']:>6.2f} {s['test_loss_pt']:>7.2f} "
                  f"{s['test_max_loss_pt']:>6.2f} {s['test_broken']:>3}/{s['fits']}", flush=True)
    out = {"artifact": str(args.artifact), "val_rows": int(val.labels.shape[0]),
           "test_rows": int(test.labels.shape[0]), "rounds": args.rounds, "seed": args.seed,
           "tolerance_pt": tol, "confidence": cfg.confidence, "guard": cfg.guard,
           "seconds": round(time.perf_counter() - start, 1), "sizes": table}
    record("studies.calibration_rows", args.json, out, **CACHED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
