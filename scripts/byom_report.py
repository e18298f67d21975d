#!/usr/bin/env python
"""Second-dataset table: a user's classifier + `--from-classifier` vs the joint `--backbone` path.

Reads what the runs wrote (the plain HF fine-tune's JSON, both artifacts' manifests and their
`eeserve evaluate --json` reports on the test split) and prints one markdown table: last-exit
test accuracy, every calibrated policy's accuracy change (points) and layer speed-up, and the
wall-clock of both paths. Nothing is re-fitted here.

    python scripts/byom_report.py --hf-json docs/figures/fine_foods_hf.json \
        --from-classifier artifacts/ff-exits docs/figures/fine_foods_exits_test.json \
        --joint artifacts/ff-joint docs/figures/fine_foods_joint_test.json \
        --json docs/figures/fine_foods_byom.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

POLICIES = ("beem", "beem-c", "beem-a", "eenet", "maxprob", "entropy", "patience", "static")


def path_row(artifact: Path, report: Path) -> dict[str, Any]:
    man = json.loads((artifact / "manifest.json").read_text())
    rep = json.loads(report.read_text())
    out: dict[str, Any] = {"artifact": str(artifact), "last_accuracy": rep["last_accuracy"],
                           "exit_accuracy_test": man["exit_accuracy"]["test"],
                           "train_seconds": man["recipe"]["train_seconds"],
                           "feature_cache_seconds": man["recipe"].get("feature_cache_seconds"),
                           "parity": man.get("last_exit_parity"), "policies": {}}
    for name in POLICIES:
        cal = (rep["policies"].get(name) or {}).get("calibrated")
        if cal:
            out["policies"][name] = {"delta_points": round(100 * (cal["accuracy"]
                                                                  - cal["last_accuracy"]), 2),
                                     "layer_speedup": round(cal["layer_speedup"], 2),
                                     "mean_exit": round(cal["mean_exit"], 2)}
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    names = list(rows)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| last-exit test accuracy | " + " | ".join(
        f"{100 * rows[n]['last_accuracy']:.2f} %" for n in names) + " |")
    lines.append("| per-exit test accuracy | " + " | ".join(
        " / ".join(f"{100 * a:.1f}" for a in rows[n]["exit_accuracy_test"]) for n in names)
        + " |")
    for p in POLICIES:
        cells = []
        for n in names:
            c = rows[n]["policies"].get(p)
            cells.append(f"{c['delta_points']:+.2f} pt, {c['layer_speedup']:.2f}×" if c else "–")
        lines.append(f"| {p}: Δ accuracy, layer speed-up | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-json", type=Path, required=True)
    ap.add_argument("--from-classifier", nargs=2, type=Path, metavar=("ARTIFACT", "REPORT"),
                    required=True)
    ap.add_argument("--joint", nargs=2, type=Path, metavar=("ARTIFACT", "REPORT"), required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    hf = json.loads(args.hf_json.read_text())
    rows = {"HF fine-tune + --from-classifier": path_row(*args.from_classifier),
            "joint --backbone": path_row(*args.joint)}
    fc = rows["HF fine-tune + --from-classifier"]
    fc["plain_hf_test_accuracy"] = hf["test_accuracy"]
    fc["hf_finetune_seconds"] = hf["train_seconds"]
    fc["total_seconds"] = round(hf["train_seconds"] + fc["train_seconds"], 1)
    rows["joint --backbone"]["total_seconds"] = rows["joint --backbone"]["train_seconds"]
    print(table(rows))
    print(f"\nplain HF classifier test accuracy {100 * hf['test_accuracy']:.2f} %; "
          f"wall-clock: HF fine-tune {hf['train_seconds']:.0f} s + --from-classifier "
          f"{fc['train_seconds']:.0f} s (feature cache {fc['feature_cache_seconds']:.0f} s) = "
          f"{fc['total_seconds']:.0f} s; joint {rows['joint --backbone']['total_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"hf": hf, "paths": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
