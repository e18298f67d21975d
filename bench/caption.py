"""Offline caption benchmark: full depth vs per-token early exit on generated test scenes.

Measures caption quality (BLEU-4 / CIDEr), mean exit layer per token, decode tokens/s and time to
first token, with state propagation counted, at batch 1 and batch 8, policies interleaved.
Decoding is the caption task's own (`service.engine.caption_decode.decode_token`), wall-clock,
in-process (no HTTP, no queue).

    python -m bench.caption artifacts/caption-default --images 150 --threads 1 \\
        --json logs/caption-bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import record

if TYPE_CHECKING:
    import torch

    from models.captioner import MultiExitCaptioner
    from policies import ExitPolicy

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
GROUP = 8  # images per batch-8 group


def median(xs: list[float]) -> float:
    return round(sorted(xs)[len(xs) // 2], 3)


@dataclass
class BenchRecord:
    """Per-image measurements of one policy (batch 1) plus batch-8 groups."""

    captions: list[str] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)  # image encoding + first token
    encode_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # first token's decoding only
    ms_per_token: list[float] = field(default_factory=list)  # decoding, per image
    prop_s: float = 0.0
    decode_s: float = 0.0
    layer_s: float = 0.0
    steps: int = 0
    props: int = 0
    batch_ms_per_token: list[float] = field(default_factory=list)  # batch-8 groups

    def summary(self) -> dict[str, Any]:
        n = len(self.exits)
        per_layer = self.layer_s / max(1, self.steps)
        return {"mean_exit_layer": round(sum(self.exits) / n, 3), "tokens": n,
                "ttft_ms": median(self.ttft_ms), "encode_ms": median(self.encode_ms),
                "first_token_decode_ms": median(self.first_ms),
                "decode_ms_per_token": median(self.ms_per_token),
                "decode_tokens_per_s": round(1e3 / median(self.ms_per_token), 1),
                "batch8_tokens_per_s": round(1e3 / median(self.batch_ms_per_token), 1),
                "propagation_share_of_decode": round(self.prop_s / self.decode_s, 4),
                "propagation_layer_equiv_per_token": round(self.prop_s / n / per_layer, 3),
                "kv_projections_per_token": round(self.props / n, 3),
                "layer_step_ms": round(per_layer * 1e3, 4)}


def bench_image(model: MultiExitCaptioner, px: torch.Tensor, policy: ExitPolicy,
                max_tokens: int, rec: BenchRecord) -> None:
    """Caption one image (batch 1) with `decode_token`, wall-clock, into `rec`."""
    from service.engine.caption_decode import caption_text, decode_token

    t0 = time.perf_counter()
    state = model.encode_images(px[None], capacity=max_tokens)
    t1 = time.perf_counter()
    toks: list[int] = []
    first, count = None, 0
    while count < max_tokens:
        count += 1
        s = decode_token(model, state, policy)
        first = first or time.perf_counter()
        rec.exits.append(int(s.exit_layer[0]))
        rec.prop_s += s.propagate_seconds
        rec.layer_s += sum(s.layer_seconds)
        rec.steps += len(s.layer_seconds)
        rec.props += s.propagated
        if int(s.tokens[0]) == model.config.eos_token_id:
            break
        toks.append(int(s.tokens[0]))
    end = time.perf_counter()
    rec.decode_s += end - t1
    rec.captions.append(caption_text(model, toks))
    rec.encode_ms.append((t1 - t0) * 1e3)
    rec.ttft_ms.append(((first or end) - t0) * 1e3)
    rec.first_ms.append(((first or end) - t1) * 1e3)
    rec.ms_per_token.append((end - t1) * 1e3 / count)


def bench_group(model: MultiExitCaptioner, pixels: torch.Tensor, policy: ExitPolicy,
                max_tokens: int, rec: BenchRecord) -> None:
    """A batch of images decoded together; finished captions leave between tokens."""
    from service.engine.caption_decode import decode_token

    state = model.encode_images(pixels, capacity=max_tokens)
    t0, tokens, n = time.perf_counter(), 0, 0
    while len(state) and n < max_tokens:
        step = decode_token(model, state, policy)
        tokens += len(step.tokens)
        n += 1
        state = state.filter(step.tokens != model.config.eos_token_id)
    rec.batch_ms_per_token.append((time.perf_counter() - t0) * 1e3 / tokens)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.caption", description=DESCRIPTION)
    ap.add_argument("artifact", type=Path, help="caption artifact directory")
    ap.add_argument("--images", type=int, default=150,
                    help=f"test scenes (at least {GROUP}; default 150)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--json", type=Path, help="write the run's record here")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.images < GROUP:
        ap.error(f"--images must be at least {GROUP} (the batch-8 figures need one full group)")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not (args.artifact / "manifest.json").is_file():
        print(f"bench.caption: error: {args.artifact}: not an artifact directory "
              "(no manifest.json)", file=sys.stderr)
        return 2
    import torch

    from models.build.caption_data import generated_scenes
    from models.build.caption_training import caption_scores
    from models.caption_loading import load_caption_artifact
    from models.image_encoder import preprocess
    from policies import build_policy
    from service.engine.caption_decode import warm_up

    torch.set_num_threads(args.threads)
    loaded = load_caption_artifact(args.artifact)
    model, m = loaded.model, loaded.manifest
    data = generated_scenes(1200, 150, 150, image_size=int(m["data"].get("image_size", 160)))
    split = data.test
    n = min(args.images, len(split))
    refs = split.captions[:n]
    pixels = [preprocess([split.image(i)], model.config.image)[0] for i in range(n)]
    L = model.num_exits
    thr = (m.get("policies", {}).get("maxprob") or {}).get("params", {}).get("threshold", 0.9)
    runs = {"none (full depth)": build_policy("none", L),
            f"maxprob {thr:.3f} (calibrated)": build_policy("maxprob", L, {"threshold": thr}),
            "maxprob 0.5": build_policy("maxprob", L, {"threshold": 0.5}),
            "static exit 2": build_policy("static", L, {"layer": 2})}
    out: dict[str, Any] = {"artifact": str(args.artifact), "images": n, "num_layers": L,
                           "runs": {}}
    recs = {name: BenchRecord() for name in runs}
    names = list(runs)
    cap = model.config.max_tokens
    with torch.inference_mode():
        warm_up(model)
        for i, px in enumerate(pixels):  # policies interleaved per image (shared, noisy CPU)
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                bench_image(model, px, runs[name], cap, recs[name])
        for g in range(0, n - GROUP + 1, GROUP):
            for j in range(len(names)):
                name = names[(g // GROUP + j) % len(names)]
                bench_group(model, torch.stack(pixels[g:g + GROUP]), runs[name], cap,
                            recs[name])
    for name, rec in recs.items():
        r = rec.summary()
        r.update(caption_scores(rec.captions, refs))
        r["exact_match"] = round(sum(c == ref[0] for c, ref in zip(rec.captions, refs,
                                                                    strict=True)) / n, 4)
        r["examples"] = rec.captions[:3]
        out["runs"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "examples"}), flush=True)
    out["references"] = [rs[0] for rs in refs[:3]]
    record("caption", args.json, out, artifact=str(args.artifact), backend="torch",
           precision="fp32", threads=args.threads, images=n, policy=names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
