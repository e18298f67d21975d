#!/usr/bin/env python
"""Each calibrated policy's operating point on the test split, per backend/precision calibration.

For torch fp32 (the artifact's own calibration) and each `manifest["calibrations"]` entry (e.g.
onnx-int8): replays the policies on that backend's cached test logits and reports accuracy, the
change against the **fp32** last exit (the promise's reference), and the layer speed-up.

    python scripts/precision_points.py artifacts/text-default \
        --json docs/figures/precision_points.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.artifact import LOGITS, load_exit_logits, read_manifest  # noqa: E402
from policies.registry import build_policy  # noqa: E402
from policies.replay import replay  # noqa: E402


def points(root: Path, file: str, policies: dict, ref_acc: float) -> dict:
    test = load_exit_logits(root, "test", file)
    out = {}
    for name, cal in sorted(policies.items()):
        pol = build_policy(name, test.num_exits, None, cal)
        if not pol.online:
            continue
        r = replay(pol, test.logits.float(), test.labels)
        out[name] = {"accuracy": round(r.accuracy() * 100, 2),
                     "change_vs_fp32_last_pt": round((r.accuracy() - ref_acc) * 100, 2),
                     "layer_speedup": round(r.layer_speedup(), 3),
                     "params": cal.get("params")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    m = read_manifest(args.artifact, verify=False)
    ref = load_exit_logits(args.artifact, "test")
    ref_acc = float((ref.logits[:, -1].argmax(-1) == ref.labels).double().mean())
    report = {"fp32_last_exit_test": round(ref_acc * 100, 2),
              "torch-fp32": points(args.artifact, LOGITS, m.get("policies") or {}, ref_acc)}
    for key, cal in (m.get("calibrations") or {}).items():
        report[key] = points(args.artifact, cal["logits_file"], cal.get("policies") or {},
                             ref_acc)
    for key, rows in report.items():
        if isinstance(rows, dict):
            print(key)
            for name, d in rows.items():
                print(f"  {name:9s} acc {d['accuracy']:.2f}  {d['change_vs_fp32_last_pt']:+.2f} pt"
                      f"  layer x{d['layer_speedup']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
