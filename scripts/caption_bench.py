#!/usr/bin/env python
"""Offline caption benchmark: full depth vs per-token early exit on generated test scenes.

Measures caption quality (BLEU-4 / CIDEr), mean exit layer per token, decode tokens/s and time to
first token, with state propagation counted, at batch 1 and batch 8, policies interleaved.

    python scripts/caption_bench.py artifacts/caption-default --images 150 --threads 1 \
        --json logs/caption-bench.json
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.captioner import MultiExitCaptioner  # noqa: E402
from models.image_encoder import preprocess  # noqa: E402
from policies import ExitPolicy  # noqa: E402
from service.engine.captioning import _text, decode_token, warm_up  # noqa: E402


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
                "ttft_ms": _median(self.ttft_ms), "encode_ms": _median(self.encode_ms),
                "first_token_decode_ms": _median(self.first_ms),
                "decode_ms_per_token": _median(self.ms_per_token),
                "decode_tokens_per_s": round(1e3 / _median(self.ms_per_token), 1),
                "batch8_tokens_per_s": round(1e3 / _median(self.batch_ms_per_token), 1),
                "propagation_share_of_decode": round(self.prop_s / self.decode_s, 4),
                "propagation_layer_equiv_per_token": round(self.prop_s / n / per_layer, 3),
                "kv_projections_per_token": round(self.props / n, 3),
                "layer_step_ms": round(per_layer * 1e3, 4)}


def bench_image(model: MultiExitCaptioner, px: torch.Tensor, policy: ExitPolicy,
                max_tokens: int, rec: BenchRecord) -> None:
    """Caption one image (batch 1) with `decode_token`, wall-clock, into `rec`."""
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
    rec.captions.append(_text(model, toks))
    rec.encode_ms.append((t1 - t0) * 1e3)
    rec.ttft_ms.append(((first or end) - t0) * 1e3)
    rec.first_ms.append(((first or end) - t1) * 1e3)
    rec.ms_per_token.append((end - t1) * 1e3 / count)


def bench_group(model: MultiExitCaptioner, pixels: torch.Tensor, policy: ExitPolicy,
                max_tokens: int, rec: BenchRecord) -> None:
    """A batch of images decoded together; finished captions leave between tokens."""
    state = model.encode_images(pixels, capacity=max_tokens)
    t0, tokens, n = time.perf_counter(), 0, 0
    while len(state) and n < max_tokens:
        step = decode_token(model, state, policy)
        tokens += len(step.tokens)
        n += 1
        state = state.filter(step.tokens != model.config.eos_token_id)
    rec.batch_ms_per_token.append((time.perf_counter() - t0) * 1e3 / tokens)


def _median(xs: list[float]) -> float:
    return round(sorted(xs)[len(xs) // 2], 3)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import platform

    from models.build.caption_data import generated_scenes
    from models.build.caption_training import caption_scores
    from models.caption_loading import load_caption_artifact
    from policies import build_policy

    p = argparse.ArgumentParser(prog="scripts/caption_bench.py",
                                description="caption quality and speed: full depth vs early exit")
    p.add_argument("dir")
    p.add_argument("--images", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.images < 8:
        p.error("--images must be at least 8 (the batch-8 figures need one full group)")
    torch.set_num_threads(args.threads)
    loaded = load_caption_artifact(args.dir)
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
    out: dict[str, Any] = {"artifact": args.dir, "images": n, "threads": args.threads,
                           "machine": platform.platform(), "num_layers": L, "runs": {}}
    recs = {name: BenchRecord() for name in runs}
    names = list(runs)
    cap = model.config.max_tokens
    with torch.inference_mode():
        warm_up(model)
        for i, px in enumerate(pixels):  # policies interleaved per image (shared, noisy CPU)
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                bench_image(model, px, runs[name], cap, recs[name])
        for g in range(0, n - 7, 8):
            for j in range(len(names)):
                name = names[(g // 8 + j) % len(names)]
                bench_group(model, torch.stack(pixels[g:g + 8]), runs[name], cap, recs[name])
    for name, rec in recs.items():
        r = rec.summary()
        r.update(caption_scores(rec.captions, refs))
        r["exact_match"] = round(sum(c == ref[0] for c, ref in zip(rec.captions, refs,
                                                                    strict=True)) / n, 4)
        r["examples"] = rec.captions[:3]
        out["runs"][name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "examples"}), flush=True)
    out["references"] = [rs[0] for rs in refs[:3]]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
