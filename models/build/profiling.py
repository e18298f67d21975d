"""Measure per-layer latency of a multi-exit text model on this machine (stepwise path).

The result goes into `manifest["latency"]`; the engine seeds its cost table from it and the
policies use it for cost-weighted speed-ups (EENet budgets, BEEM-C weights).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from models.text_classifier import MultiExitTextClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: MultiExitTextClassifier, texts: Sequence[str],
                    batch_sizes: Sequence[int] = (1, 8), repeats: int = 10) -> dict[str, Any]:
    """Median ms of embed, each layer and each exit head, per batch size, over real texts."""
    model.eval()
    dev = model.device
    out: dict[str, Any] = {"device": str(dev), "threads": torch.get_num_threads(),
                           "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                           "torch": torch.__version__, "embed_ms": {}, "per_layer_ms": {},
                           "head_ms": {}}
    lengths = []
    for bs in batch_sizes:
        embed_t: list[float] = []
        layer_t: list[list[float]] = [[] for _ in range(model.num_exits)]
        head_t: list[float] = []
        for r in range(repeats + 2):
            chunk = [texts[(r * bs + i) % len(texts)] for i in range(bs)]
            enc = model.encode(chunk)
            lengths.append(enc.input_ids.shape[1])
            _sync(dev)
            t0 = time.perf_counter()
            batch = model.embed(enc)
            _sync(dev)
            t1 = time.perf_counter()
            for k in range(1, model.num_exits + 1):
                a = time.perf_counter()
                hidden = model._layer(batch, k - 1)  # (B, T, H)
                _sync(dev)
                b = time.perf_counter()
                model.heads[k - 1](hidden, batch.attention_mask)  # (B, C)
                _sync(dev)
                c = time.perf_counter()
                batch = type(batch)(hidden, batch.attention_mask, k)
                if r >= 2:  # warm-up rounds are dropped
                    layer_t[k - 1].append((b - a) * 1e3)
                    head_t.append((c - b) * 1e3)
            if r >= 2:
                embed_t.append((t1 - t0) * 1e3)
        out["embed_ms"][str(bs)] = round(statistics.median(embed_t), 4)
        out["per_layer_ms"][str(bs)] = [round(statistics.median(t), 4) for t in layer_t]
        out["head_ms"][str(bs)] = round(statistics.median(head_t), 4)
    out["seq_len"] = int(statistics.median(lengths))
    return out
