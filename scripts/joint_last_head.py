#!/usr/bin/env python
"""Would an HF-standard last head (BERT pooler + classifier on token 0) cost the joint recipe
accuracy? Trains the joint model with its mean-pooling last exit and with the standard head
(same data, settings and seeds) and prints test accuracy per exit. Tiny: the tiny-text recipe's
random BERT on generated sentences. Real (`--real KIND`): MiniLM-L6 on the fine-food reviews,
one head kind per process (run two at once), the pretrained pooler moved into the hf head.

    python scripts/joint_last_head.py --seeds 0 1 2 --json docs/figures/joint_last_head_tiny.json
    python scripts/joint_last_head.py --real exit --json docs/figures/joint_last_head_exit.json
    python scripts/joint_last_head.py --real hf-bert --json docs/figures/joint_last_head_hf.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.build.data import tiny_sentiment  # noqa: E402
from models.build.tiny import tiny_backbone_config, tiny_tokenizer  # noqa: E402
from models.build.training import TrainConfig, exit_accuracy, exit_logits, train  # noqa: E402
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig  # noqa: E402


def run(last_head: str, seed: int) -> list[float]:
    data = tiny_sentiment(1200, seed=seed)
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    bcfg = tiny_backbone_config("bert", layers=3, vocab_size=len(tok))
    bcfg.num_labels = 2
    head = TextClassifierConfig(num_labels=2, max_length=32, dropout=0.0, last_head=last_head)
    model = MultiExitTextClassifier.from_config(bcfg, tok, head)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, head_lr=3e-3, distill=0.0, patience=4,
                      max_length=32, warmup=0.05, seed=seed)
    train(model, data, replace(cfg), progress=False)
    return exit_accuracy(exit_logits(model, data.test, 32), data.test.labels)


def run_real(last_head: str, epochs: int, max_length: int) -> dict[str, object]:
    import time

    from transformers import AutoModel, AutoTokenizer

    from models.build.backbones import MINILM_L6, fetch_backbone
    from models.build.data import load_fine_foods

    data = load_fine_foods()
    bdir = str(fetch_backbone(MINILM_L6))
    torch.manual_seed(42)
    backbone = AutoModel.from_pretrained(bdir)  # with its pretrained pooler
    head = TextClassifierConfig(num_labels=2, max_length=max_length)
    model = MultiExitTextClassifier(backbone, AutoTokenizer.from_pretrained(bdir), head)
    if last_head == "hf-bert":
        from models.hf_heads import BertHead

        std = BertHead(backbone.config)
        std.pooler = backbone.pooler
        model.heads[-1] = std
    backbone.pooler = None
    cfg = TrainConfig(epochs=epochs, max_length=max_length)
    start = time.perf_counter()
    res = train(model, data, cfg, progress=False)
    acc = exit_accuracy(exit_logits(model, data.test, max_length), data.test.labels)
    return {"last_head": last_head, "epochs": epochs, "max_length": max_length,
            "val_last": res.best_val_accuracy, "test_exits": acc,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--real", choices=["exit", "hf-bert"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.real:
        out = run_real(args.real, args.epochs, args.max_length)
        print(json.dumps(out))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return
    res: dict[str, list[list[float]]] = {"exit": [], "hf-bert": []}
    for seed in args.seeds:  # interleaved, so drift hits both alike
        for kind in res:
            res[kind].append(run(kind, seed))
            print(kind, seed, [round(a, 4) for a in res[kind][-1]], flush=True)
    summary = {k: {"last_exit_median": statistics.median(r[-1] for r in v), "runs": v}
               for k, v in res.items()}
    print(json.dumps({k: v["last_exit_median"] for k, v in summary.items()}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
