#!/usr/bin/env python
"""int8 quantisation variants of the per-layer graphs, side by side with fp32, on the test split.

Quantises the artifact's fp32 layer graphs (ONNX Runtime dynamic quantisation, MatMul weights)
three ways into a temporary folder and reports, per variant, the last exit's test accuracy, its
change against fp32, and the share of final predictions equal to fp32.

    python scripts/int8_variants.py artifacts/text-default --json docs/figures/int8_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.build.eval_texts import load_eval_texts  # noqa: E402
from models.build.onnx_export import all_logits  # noqa: E402
from models.loading import load_text_artifact  # noqa: E402
from models.onnx_backend import OnnxTextModel  # noqa: E402

VARIANTS = {"per-tensor": {}, "per-channel": {"per_channel": True},
            "per-channel, reduce_range": {"per_channel": True, "reduce_range": True}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = load_text_artifact(args.artifact, backend="onnx")
    texts, labels = load_eval_texts(args.artifact, fp32.manifest).split("test")
    y = torch.tensor(labels)
    ref = all_logits(fp32.model, texts)[:, -1].argmax(-1)  # (N,)
    report = {"fp32_last_exit": float((ref == y).double().mean())}
    for name, kw in VARIANTS.items():
        out = Path(tempfile.mkdtemp(prefix="int8-"))
        for g in sorted((args.artifact / "onnx" / "fp32").glob("*.onnx")):
            quantize_dynamic(str(g), str(out / g.name), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], **kw)
        m = OnnxTextModel(out, fp32.model.num_exits, fp32.model.tokenizer, fp32.model.config,
                          "int8")
        got = all_logits(m, texts)[:, -1].argmax(-1)  # (N,)
        acc = float((got == y).double().mean())
        report[name] = {"last_exit": acc, "change_pt": (acc - report["fp32_last_exit"]) * 100,
                        "agreement_with_fp32": float((got == ref).double().mean())}
        print(f"{name:26s} last exit {acc:.4f}  {report[name]['change_pt']:+.2f} pt  "
              f"= fp32 on {report[name]['agreement_with_fp32']:.2%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
