"""Compare calibrated builds of one task: per-exit accuracy, calibrated points, seed spread.

Each argument is `LABEL=DIR` (a calibrated artifact). For every build it reads the per-exit
accuracy from the manifest, replays every calibrated policy on test (the serving path,
through `policies.fit.evaluation.evaluate`), and measures the validation wall: the best layer
speed-up of one global max-prob threshold whose *point* loss on validation is <= 0.5 points
(no guard can certify more than that on this validation split). Builds that share a label
prefix (LABEL up to the first '@', e.g. `d0@s42`, `d0@s1`) are summarised as median / min / max.

    python scripts/recipe_compare.py base@s42=artifacts/text-default d0@s42=artifacts/td-d0-s42 \
        --json docs/figures/recipe_compare.json

Nothing here is fitted on test; test is only replayed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from models.artifact import read_manifest
from policies.base import probabilities
from policies.fit.calibration import CalibrationConfig, load_split
from policies.fit.evaluation import evaluate
from policies.fit.sweep import sweep_global

POLICIES = ("maxprob", "beem", "eenet", "patience")
TOL = 0.005


def val_wall(val: Any) -> dict[str, float]:
    """Best layer speed-up of a global max-prob threshold with point loss <= TOL on validation."""
    taus = [1.0 - 10 ** (-e / 20) for e in range(1, 81)]  # 0.11 .. 0.9999, dense near 1
    probs = probabilities(val.logits)  # (N, K, C)
    conf, preds = probs.max(dim=-1)  # (N, K) each
    pts = [s.point for s in sweep_global(conf, preds, val.labels, val.costs, taus, 0.8)]
    ok = [p for p in pts if p.loss <= TOL + 1e-12]
    best = max(ok, key=lambda p: p.layer_speedup)
    return {"layer_speedup": round(best.layer_speedup, 3), "loss_pt": round(best.loss * 100, 2)}


def one_build(label: str, path: Path) -> dict[str, Any]:
    manifest = read_manifest(path)
    val = load_split(path, "val", manifest)
    test = load_split(path, "test", manifest)
    rep = evaluate(val, test, "test", manifest.get("policies") or {}, list(POLICIES),
                   CalibrationConfig())
    pols: dict[str, Any] = {}
    for p in rep.policies:
        cal = p.calibrated
        best = p.best
        pols[p.name] = {
            "delta_pt": round((cal.point.accuracy - rep.last_accuracy) * 100, 2) if cal else None,
            "layer_x": round(cal.point.layer_speedup, 3) if cal else None,
            "kept": p.kept,
            "val_layer_x": round(float(((manifest.get("policies") or {}).get(p.name) or {})
                                       .get("operating_point", {}).get("layer_speedup", 0.0)), 3),
            "hindsight_layer_x": round(best.point.layer_speedup, 3) if best else None}
    recipe = manifest.get("recipe") or {}
    return {"label": label, "dir": str(path), "default_policy": manifest.get("default_policy"),
            "steps": recipe.get("steps"), "train": recipe.get("train"),
            "exit_accuracy": {k: [round(a * 100, 2) for a in v]
                              for k, v in manifest["exit_accuracy"].items()},
            "val_wall_maxprob": val_wall(val), "policies": pols}


def spread(builds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in builds:
        groups.setdefault(b["label"].split("@")[0], []).append(b)
    out: dict[str, dict[str, Any]] = {}
    for name, bs in groups.items():
        def stats(vals: list[float]) -> dict[str, float]:
            return {"median": round(statistics.median(vals), 3), "min": min(vals),
                    "max": max(vals)}
        row = {"n": len(bs), "last_test": stats([b["exit_accuracy"]["test"][-1] for b in bs])}
        for pol in POLICIES:
            vs = [b["policies"][pol]["val_layer_x"] for b in bs]
            xs = [b["policies"][pol]["layer_x"] for b in bs if b["policies"][pol]["layer_x"]]
            ds = [b["policies"][pol]["delta_pt"] for b in bs
                  if b["policies"][pol]["delta_pt"] is not None]
            if xs:
                row[pol] = {"val_layer_x": stats(vs), "layer_x": stats(xs), "delta_pt": stats(ds)}
        out[name] = row
    return out


def show(builds: list[dict[str, Any]]) -> None:
    for b in builds:
        ea = b["exit_accuracy"]
        print(f"\n{b['label']} ({b['dir']}, {b['steps']} steps, default {b['default_policy']})")
        print("  val  exits: " + " / ".join(f"{a:.2f}" for a in ea["val"]))
        print("  test exits: " + " / ".join(f"{a:.2f}" for a in ea["test"]))
        w = b["val_wall_maxprob"]
        print(f"  val wall (max-prob, point loss <= 0.5 pt): {w['layer_speedup']:.2f}x "
              f"at {w['loss_pt']:.2f} pt")
        for name, p in b["policies"].items():
            print(f"  {name:9s} val (guarded fit) {p['val_layer_x']:.2f}x;"
                  f" test: {p['delta_pt']:+.2f} pt / {p['layer_x']:.2f}x "
                  f"kept={p['kept']}  hindsight {p['hindsight_layer_x']}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", metavar="LABEL=DIR")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    builds = []
    for item in args.builds:
        label, _, path = item.partition("=")
        builds.append(one_build(label, Path(path)))
    show(builds)
    groups = spread(builds)
    print("\nspread over builds of one recipe (median [min, max]):")
    for name, row in groups.items():
        lt = row["last_test"]
        parts = [f"last exit test {lt['median']:.2f} [{lt['min']:.2f}, {lt['max']:.2f}] %"]
        for pol in POLICIES:
            if pol in row:
                x, d, v = row[pol]["layer_x"], row[pol]["delta_pt"], row[pol]["val_layer_x"]
                parts.append(f"{pol} val {v['median']:.2f}x, test {x['median']:.2f}x "
                             f"[{x['min']:.2f}, {x['max']:.2f}] "
                             f"{d['median']:+.2f} pt [{d['min']:+.2f}, {d['max']:+.2f}]")
        print(f"  {name} (n={row['n']}): " + "; ".join(parts))
    if args.json:
        args.json.write_text(json.dumps({"builds": builds, "spread": groups}, indent=1) + "\n")


if __name__ == "__main__":
    main()
