"""Fine-tune a plain Hugging Face sequence classifier (no exits): the model a user already has.

An ordinary transformers training loop: `AutoModelForSequenceClassification` on a pretrained
encoder, AdamW with linear warmup/decay, cross-entropy, the epoch with the best validation
accuracy kept, saved with `save_pretrained` (+ tokenizer) as a standard directory. This is the
starting point of `eeserve train --from-classifier DIR`.

    python -m models.build.finetune_hf --data fine-foods --out artifacts/ff-hf \\
        --epochs 2 --max-length 128 --json docs/figures/fine_foods_hf.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.build.backbones import resolve_backbone
from models.build.data import TextDataset, TextSplit, load_data
from models.build.training import length_batches
from models.environment import versions

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


@torch.no_grad()
def accuracy(model: Any, tok: Any, split: TextSplit, max_length: int) -> float:
    """Share of `split` the classifier gets right (eval mode inside, train mode after)."""
    model.eval()
    right = 0
    for idx in length_batches(split, 64, None):
        enc = tok([split.texts[i] for i in idx], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)  # (b,)
        right += int((pred == torch.tensor([split.labels[i] for i in idx])).sum())
    model.train()
    return right / len(split)


def finetune(args: argparse.Namespace, data: TextDataset, src: str) -> dict[str, Any]:
    """Train, keep the best epoch by validation accuracy in `args.out`; the run's figures."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)),
        label2id={n: i for i, n in enumerate(data.label_names)})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = math.ceil(len(data.train) / args.batch_size) * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    start = time.perf_counter()
    best, history = -1.0, []
    model.train()
    for epoch in range(args.epochs):
        for n, idx in enumerate(length_batches(data.train, args.batch_size, rng)):
            enc = tok([data.train.texts[i] for i in idx], padding=True, truncation=True,
                      max_length=args.max_length, return_tensors="pt")
            y = torch.tensor([data.train.labels[i] for i in idx])  # (b,)
            loss = model(**enc, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if n % 20 == 0:
                print(f"epoch {epoch} step {n} loss {loss.item():.4f} "
                      f"{time.perf_counter() - start:.0f}s", flush=True)
        acc = accuracy(model, tok, data.val, args.max_length)
        history.append({"epoch": epoch + 1, "val_accuracy": acc,
                        "seconds": round(time.perf_counter() - start, 1)})
        print(history[-1], flush=True)
        if acc > best:
            best = acc
            model.save_pretrained(str(args.out))
            tok.save_pretrained(str(args.out))
    seconds = time.perf_counter() - start
    model = AutoModelForSequenceClassification.from_pretrained(str(args.out)).eval()
    test_acc = accuracy(model, tok, data.test, args.max_length)
    return {"data": data.summary(), "backbone": args.backbone, "out": str(args.out),
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "max_length": args.max_length, "seed": args.seed,
            "train_seconds": round(seconds, 1), "best_val_accuracy": best,
            "test_accuracy": test_acc, "history": history,
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{torch.get_num_threads()} torch thread(s)",
            "versions": versions()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.build.finetune_hf",
                                 description=DESCRIPTION)
    ap.add_argument("--data", default="fine-foods", help="fine-foods or a CSV/TSV/JSONL file")
    ap.add_argument("--backbone", default="all-MiniLM-L6-v2",
                    help="a known backbone name or a local model directory")
    ap.add_argument("--out", required=True, type=Path, help="the classifier directory to write")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, help="write the figures here")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--max-length", args.max_length), ("--threads", args.threads)):
        if value < 1:
            ap.error(f"{flag} must be >= 1, got {value}")
    try:
        data = load_data(args.data)
        src = str(resolve_backbone(args.backbone))
    except (OSError, ValueError) as e:
        print(f"finetune_hf: error: {first_line(e)}", file=sys.stderr)
        return 2
    result = finetune(args, data, src)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
