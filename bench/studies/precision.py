"""Precision studies: calibrated operating points per backend/precision, int8 variants vs fp32.

- `points`: each calibrated policy's operating point on the test split, per backend/precision
  calibration. For torch fp32 (the artifact's own calibration) and each
  `manifest["calibrations"]` entry (e.g. onnx-int8): replays the policies on that backend's
  cached test logits and reports accuracy, the change against the **fp32** last exit (the
  promise's reference), and the layer speed-up.
- `int8-variants`: int8 quantisation variants of the per-layer graphs, side by side with fp32,
  on the test split. Quantises the artifact's fp32 layer graphs (ONNX Runtime dynamic
  quantisation, MatMul weights) three ways into temporary folders and reports, per variant,
  the last exit's test accuracy, its change against fp32, and the share of final predictions
  equal to fp32.

    python -m bench.studies.precision points artifacts/text-default \\
        --json docs/figures/precision_points.json
    python -m bench.studies.precision int8-variants artifacts/text-default \\
        --json docs/figures/int8_variants.json
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.harness import record
from bench.studies._common import replay_calibrated

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
VARIANTS: dict[str, dict[str, Any]] = {
    "per-tensor": {}, "per-channel": {"per_channel": True},
    "per-channel, reduce_range": {"per_channel": True, "reduce_range": True}}


# ---- points ---------------------------------------------------------------------------------
def points(root: Path, file: str, policies: Mapping[str, Any],
           ref_acc: float) -> dict[str, dict[str, Any]]:
    """Every online calibrated policy replayed on `file`'s cached test logits."""
    from models.artifact import load_exit_logits

    test = load_exit_logits(root, "test", file)
    out = {}
    for name, cal in sorted(policies.items()):
        r = replay_calibrated(name, cal, test.logits.float(), test.labels, offline="skip")
        if r is None:
            continue
        out[name] = {"accuracy": round(r.accuracy() * 100, 2),
                     "change_vs_fp32_last_pt": round((r.accuracy() - ref_acc) * 100, 2),
                     "layer_speedup": round(r.layer_speedup(), 3),
                     "params": cal.get("params")}
    return out


def run_points(args: argparse.Namespace) -> int:
    from models.artifact import LOGITS, load_exit_logits, read_manifest

    m = read_manifest(args.artifact, verify=False)
    ref = load_exit_logits(args.artifact, "test")
    ref_acc = float((ref.logits[:, -1].argmax(-1) == ref.labels).double().mean())
    report: dict[str, Any] = {
        "fp32_last_exit_test": round(ref_acc * 100, 2),
        "torch-fp32": points(args.artifact, LOGITS, m.get("policies") or {}, ref_acc)}
    runs = [{"backend": "torch", "precision": "fp32"}]
    for key, cal in (m.get("calibrations") or {}).items():
        report[key] = points(args.artifact, cal["logits_file"], cal.get("policies") or {},
                             ref_acc)
        runs.append({"backend": cal.get("backend"), "precision": cal.get("precision")})
    for key, rows in report.items():
        if isinstance(rows, dict):
            print(key)
            for name, d in rows.items():
                print(f"  {name:9s} acc {d['accuracy']:.2f}  {d['change_vs_fp32_last_pt']:+.2f} pt"
                      f"  layer x{d['layer_speedup']:.2f}")
    record("studies.precision.points", args.json, report,
           backend=[r["backend"] for r in runs], precision=[r["precision"] for r in runs])
    return 0


# ---- int8-variants --------------------------------------------------------------------------
def run_int8_variants(args: argparse.Namespace) -> int:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models.build.eval_texts import load_eval_texts
    from models.build.onnx_export import all_logits
    from models.loading import load_text_artifact
    from models.onnx_backend import OnnxTextModel

    fp32 = load_text_artifact(args.artifact, backend="onnx")
    texts, labels = load_eval_texts(args.artifact, fp32.manifest).split("test")
    y = torch.tensor(labels)
    ref = all_logits(fp32.model, texts)[:, -1].argmax(-1)  # (N,)
    report: dict[str, Any] = {"fp32_last_exit": float((ref == y).double().mean())}
    threads = getattr(getattr(fp32.model, "options", None), "intra_op_threads", None)
    for name, kw in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
            out = Path(tmp)
            for g in sorted((args.artifact / "onnx" / "fp32").glob("*.onnx")):
                quantize_dynamic(str(g), str(out / g.name), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul"], **kw)
            m = OnnxTextModel(out, fp32.model.num_exits, fp32.model.tokenizer,
                              fp32.model.config, "int8")
            got = all_logits(m, texts)[:, -1].argmax(-1)  # (N,)
        acc = float((got == y).double().mean())
        report[name] = {"last_exit": acc, "change_pt": (acc - report["fp32_last_exit"]) * 100,
                        "agreement_with_fp32": float((got == ref).double().mean())}
        print(f"{name:26s} last exit {acc:.4f}  {report[name]['change_pt']:+.2f} pt  "
              f"= fp32 on {report[name]['agreement_with_fp32']:.2%}", flush=True)
    record("studies.precision.int8_variants", args.json, report, backend="onnx",
           precision=["fp32", "int8"], threads=threads)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.precision",
                                 description=DESCRIPTION)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("points", help="calibrated operating points per backend/precision")
    p.add_argument("artifact", type=Path)
    p.add_argument("--json", type=Path)
    p.set_defaults(run=run_points)
    q = sub.add_parser("int8-variants", help="int8 quantisation variants vs fp32, last exit")
    q.add_argument("artifact", type=Path)
    q.add_argument("--json", type=Path)
    q.set_defaults(run=run_int8_variants)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
