#!/usr/bin/env python
"""Round trip on real data: the user's classifier -> eeserve (--from-classifier) -> export hf.

On the first N test texts, compares (max |logit difference|, argmax agreement):
  original HF directory  vs  eeserve's full depth (the step loop, `policy: none`)
  exported HF directory  vs  eeserve's full depth
  exported HF directory  vs  original HF directory

    python scripts/hf_roundtrip.py --original artifacts/ff-hf --artifact artifacts/ff-exits \
        --exported artifacts/ff-exits-hf --data fine-foods --n 200 \
        --json docs/figures/fine_foods_hf_roundtrip.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from models.build.data import load_data  # noqa: E402
from models.loading import load_text_artifact  # noqa: E402


@torch.no_grad()
def hf_logits(path: Path, texts: list[str], max_length: int) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(str(path),
                                                               local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    out = [model(**tok([t], truncation=True, max_length=max_length, return_tensors="pt")).logits
           for t in texts]
    return torch.cat(out)  # (N, C)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    return {"max_abs_diff": float((a - b).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original", type=Path, required=True)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--exported", type=Path, required=True)
    ap.add_argument("--data", default="fine-foods")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts = load_data(args.data).test.texts[:args.n]
    model = load_text_artifact(args.artifact).model
    m = model.config.max_length
    ours = torch.cat([model.all_exit_logits(model.encode([t]))[:, -1] for t in texts])  # (N, C)
    orig, exp = hf_logits(args.original, texts, m), hf_logits(args.exported, texts, m)
    res = {"n": len(texts), "max_length": m,
           "original_vs_eeserve_none": compare(orig, ours),
           "exported_vs_eeserve_none": compare(exp, ours),
           "exported_vs_original": compare(exp, orig)}
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
