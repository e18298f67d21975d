"""Round trip on real data: the user's classifier -> eeserve (--from-classifier) -> export hf.

On the first N test texts, compares (max |logit difference|, argmax agreement):
  original HF directory  vs  eeserve's full depth (the step loop, `policy: none`)
  exported HF directory  vs  eeserve's full depth
  exported HF directory  vs  original HF directory

    python -m bench.studies.hf_roundtrip --original artifacts/ff-hf --artifact artifacts/ff-exits \\
        --exported artifacts/ff-exits-hf --data fine-foods --n 200 \\
        --json docs/figures/fine_foods_hf_roundtrip.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import record
from bench.studies._common import CACHED, one_thread

if TYPE_CHECKING:
    import torch

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def hf_logits(path: Path, texts: list[str], max_length: int) -> torch.Tensor:
    """(N, C) logits of an HF sequence classifier directory, one text at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path),
                                                               local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    with torch.no_grad():
        out = [model(**tok([t], truncation=True, max_length=max_length,
                           return_tensors="pt")).logits for t in texts]
    return torch.cat(out)  # (N, C)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    return {"max_abs_diff": float((a - b).abs().max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.hf_roundtrip",
                                 description=DESCRIPTION)
    ap.add_argument("--original", type=Path, required=True)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--exported", type=Path, required=True)
    ap.add_argument("--data", default="fine-foods")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    from models.build.data import load_data
    from models.loading import load_text_artifact

    one_thread()
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
    record("studies.hf_roundtrip", args.json, res, **CACHED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
