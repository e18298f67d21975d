"""One training step of the multi-exit text classifier, MiniLM-L6 vs MPNet-base, side by side.

A step is what `models.build.training` does per batch: tokenise 32 movie-review sentences (max 64
tokens), forward through every layer and exit head, depth-weighted loss, backward, clip, AdamW.
Step time does not depend on the weight values, so both encoders are built from their
architecture configs with random weights (all-MiniLM-L6-v2: 6 layers, hidden 384; all-mpnet-base-
v2: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30527); the MiniLM tokenizer feeds both
(both are ~30k-piece uncased WordPiece vocabularies, so token counts match closely). Batches are
drawn in training order (length-sorted chunks, shuffled), the encoders interleaved batch by
batch; medians. The build estimate scales a measured MiniLM build by the step-time ratio.

    python -m bench.studies.training_step --steps 6 --threads 1 \\
        --json docs/figures/step_time_cpu.json
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import record

if TYPE_CHECKING:
    from models.text_classifier import MultiExitTextClassifier

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
MPNET_BASE: dict[str, Any] = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, vocab_size=30527, max_position_embeddings=514,
                  pad_token_id=1, relative_attention_num_buckets=32)


def models(tok: Any) -> dict[str, MultiExitTextClassifier]:
    from transformers import AutoConfig, MPNetConfig

    from models.build.backbones import fetch_backbone
    from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

    head = TextClassifierConfig(num_labels=2, max_length=64)
    minilm = AutoConfig.from_pretrained(str(fetch_backbone()))
    return {"all-MiniLM-L6-v2": MultiExitTextClassifier.from_config(minilm, tok, head),
            "all-mpnet-base-v2": MultiExitTextClassifier.from_config(MPNetConfig(**MPNET_BASE),
                                                                     tok, head)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.training_step",
                                 description=DESCRIPTION)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minilm-build-s", type=float, default=2447.0,
                    help="a measured text-default build (seconds) to scale")
    ap.add_argument("--json", type=Path)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from models.build.backbones import fetch_backbone
    from models.build.data import load_movie_reviews
    from models.build.training import batch_tensors, depth_weighted_loss, length_batches

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(fetch_backbone()))
    data = load_movie_reviews()
    nets = models(tok)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in nets.items()}
    batches = length_batches(data.train, 32, random.Random(0))
    times: dict[str, list[float]] = {k: [] for k in nets}
    tokens: list[int] = []
    for i in range(args.steps + 1):  # the first step of each is warm-up
        idx = batches[i]
        for name, model in nets.items():  # interleaved
            model.train()
            t0 = time.perf_counter()
            ids, mask, y = batch_tensors(model, data.train, idx, 64, torch.device("cpu"))
            loss = depth_weighted_loss(model(ids, mask), y, 0.3, 2.0)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            if i > 0:
                times[name].append(time.perf_counter() - t0)
        if i > 0:
            tokens.append(int(ids.shape[1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["all-mpnet-base-v2"] / med["all-MiniLM-L6-v2"]
    out: dict[str, Any] = {
        "threads": args.threads, "steps": args.steps, "batch": 32,
        "padded_lengths": tokens, "median_step_s": med, "ratio": ratio,
        "params_m": {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in nets.items()},
        "minilm_build_s": args.minilm_build_s,
        "mpnet_build_estimate_s": args.minilm_build_s * ratio}
    for k, v in med.items():
        print(f"{k:<20} median step {v:.2f}s over {args.steps} steps "
              f"({out['params_m'][k]:.1f} M params)")
    print(f"ratio {ratio:.2f}: text-base build ~ {args.minilm_build_s * ratio / 3600:.1f} h "
          f"if text-default takes {args.minilm_build_s / 60:.0f} min")
    record("studies.training_step", args.json, out, backend="torch", precision="fp32",
           threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
