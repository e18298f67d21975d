"""Joint fine-tuning of a multi-exit text classifier (backbone + every exit head).

Loss (BEEM / PABEE): depth-weighted cross-entropy  sum_i i*CE_i / sum_i i, plus optional
self-distillation of the last exit into the earlier ones (KL at temperature T, weight `distill`).
AdamW, linear warmup + linear decay, gradient clipping, early stopping on validation accuracy
of the last exit (counted in evaluations, never in time); the best weights are restored at the end.

Reproducible on one machine: `seeded(seed)` fixes Python's and torch's generators (call it before
building the model, so fresh exit heads start the same), the batch order comes from its own
`random.Random(seed)`, dropout from torch's seeded generator, and training runs on a fixed number
of intra-op threads (`TrainConfig.threads`) with torch's deterministic algorithms, so two builds
of one recipe and seed give the same weights bit for bit.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import progress as build_progress
from models.build.data import TextDataset, TextSplit
from models.text_classifier import MultiExitTextClassifier


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4  # upper bound; early stopping usually ends sooner
    batch_size: int = 32
    lr: float = 4e-5  # backbone learning rate
    head_lr: float = 1e-3  # exit heads start from scratch and learn faster
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with linear warmup
    clip: float = 1.0  # max gradient norm
    distill: float = 0.3  # weight of KL(last exit || exit i); 0 disables self-distillation
    depth_power: float = 1.0  # exit i's loss weight is i**depth_power (0: every exit alike)
    temperature: float = 2.0  # distillation temperature
    patience: int = 4  # evaluations without improvement before stopping
    evals_per_epoch: int = 3
    average_from: float = 1.0  # average the weights of every evaluation after this many epochs
    freeze_backbone: bool = False  # heads only (far worse on this task; never the default)
    seed: int = 42
    max_length: int = 64
    threads: int = 2  # torch intra-op threads while training (fixed: results depend on it)
    val_fraction: float = 0.1  # movie-review recipes only: validation share of the reviews, taken
    # from training (the test rows stay the same)


@dataclass(frozen=True)
class TrainResult:
    best_val_accuracy: float  # last-exit validation accuracy of the restored weights
    epochs_run: float
    steps: int
    seconds: float
    history: list[dict[str, object]]  # per evaluation: step, loss, val_last, val_exits (list)


def with_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """`cfg` with named fields replaced; values are cast to the field's type (CLI strings)."""
    known = {f.name: type(getattr(cfg, f.name)) for f in fields(cfg)}
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"unknown training setting {name!r}; known: {sorted(known)}")
        kind = known[name]
        try:
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[name] = value.lower() in ("true", "1")
            else:
                out[name] = kind(value)
        except ValueError:
            raise ValueError(f"training setting {name}={value!r} is not a {kind.__name__}") \
                from None
    if out.get("threads", 1) < 1:
        raise ValueError(f"training setting threads must be >= 1, got {out['threads']}")
    return replace(cfg, **out)


def seeded(seed: int) -> None:
    """Seed Python's and torch's global generators (model init, dropout)."""
    random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Fixed intra-op threads and deterministic torch algorithms; restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def depth_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, distill: float = 0.0,
                        temperature: float = 2.0, power: float = 1.0) -> torch.Tensor:
    """sum_i w_i*CE_i / sum_i w_i over exits with w_i = i**power (1: BEEM / PABEE's depth
    weighting, 0: uniform), plus `distill` * mean_i<L KL(p_L || p_i)."""
    b, k, c = logits.shape  # (B, K, C)
    ce = F.cross_entropy(logits.reshape(b * k, c), labels.repeat_interleave(k), reduction="none")
    ce = ce.view(b, k).mean(0)  # (K,)
    w = torch.arange(1, k + 1, dtype=ce.dtype, device=ce.device) ** power  # (K,)
    loss = (w * ce).sum() / w.sum()
    if distill > 0 and k > 1:
        t = temperature
        teacher = F.softmax(logits[:, -1].detach() / t, dim=-1)  # (B, C)
        student = F.log_softmax(logits[:, :-1] / t, dim=-1)  # (B, K-1, C)
        kl = F.kl_div(student, teacher.unsqueeze(1).expand_as(student), reduction="none")
        loss = loss + distill * (t * t) * kl.sum(-1).mean()
    return loss


def length_batches(split: TextSplit, size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar lengths (less padding); shuffled when `rng` is given."""
    order = sorted(range(len(split)), key=lambda i: len(split.texts[i]))
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


def batch_tensors(model: MultiExitTextClassifier, split: TextSplit, idx: list[int],
                  max_length: int, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows `idx` of `split` tokenised as one padded batch: input ids, attention mask, labels."""
    enc = model.tokenizer([split.texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
    y = torch.tensor([split.labels[i] for i in idx], device=device)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), y


@torch.no_grad()
def exit_logits(model: MultiExitTextClassifier, split: TextSplit, max_length: int,
                batch_size: int = 64) -> torch.Tensor:
    """(N, K, C) float32 logits of every exit, rows in the split's order."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(split), model.num_exits, model.config.num_labels)
    for idx in length_batches(split, batch_size, None):
        ids, mask, _ = batch_tensors(model, split, idx, max_length, model.device)
        out[idx] = model(ids, mask).float().cpu()  # (b, K, C)
    model.train(was_training)
    return out


def exit_accuracy(logits: torch.Tensor, labels: list[int] | torch.Tensor) -> list[float]:
    y = torch.as_tensor(labels)
    return (logits.argmax(-1) == y[:, None]).float().mean(0).tolist()  # (K,)


def train(model: MultiExitTextClassifier, data: TextDataset, cfg: TrainConfig,
          progress: bool = True) -> TrainResult:
    """Fine-tune in place; returns the history and restores the best validation weights."""
    with reproducible(cfg.threads):
        return _train(model, data, cfg, progress)


def _train(model: MultiExitTextClassifier, data: TextDataset, cfg: TrainConfig,
           progress: bool) -> TrainResult:
    device = model.device
    seeded(cfg.seed)
    rng = random.Random(cfg.seed)
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    groups = [{"params": [p for p in model.heads.parameters()], "lr": cfg.head_lr}]
    if not cfg.freeze_backbone:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    best, best_state, bad, step, history = -1.0, None, 0, 0, []
    avg: dict[str, torch.Tensor] | None = None
    n_avg = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="train", disable=not progress, unit="step")
    model.train()
    stop = False
    for _epoch in range(cfg.epochs):
        for idx in length_batches(data.train, cfg.batch_size, rng):
            ids, mask, y = batch_tensors(model, data.train, idx, cfg.max_length, device)
            loss = depth_weighted_loss(model(ids, mask), y, cfg.distill, cfg.temperature,
                                       cfg.depth_power)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            build_progress.step("training", step, total)
            bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{max(best, 0):.3f}")
            if step % eval_every == 0 or step == total:
                accs = exit_accuracy(exit_logits(model, data.val, cfg.max_length), data.val.labels)
                history.append({"step": step, "loss": float(loss.item()),
                                "val_last": accs[-1], "val_exits": accs})
                if step >= cfg.average_from * steps_per_epoch:
                    avg, n_avg = _accumulate(avg, model, n_avg), n_avg + 1
                if accs[-1] > best:
                    best, bad = accs[-1], 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        stop = True
                        break
        if stop:
            break
    bar.close()
    if avg is not None and n_avg > 1:  # weight averaging: kept only if it wins on validation
        model.load_state_dict(avg)
        accs = exit_accuracy(exit_logits(model, data.val, cfg.max_length), data.val.labels)
        history.append({"step": step, "averaged_checkpoints": n_avg, "val_last": accs[-1],
                        "val_exits": accs})
        if accs[-1] >= best:
            best, best_state = accs[-1], None
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best, step / steps_per_epoch, step, time.perf_counter() - start, history)


def _accumulate(avg: dict[str, torch.Tensor] | None, model: torch.nn.Module,
                n: int) -> dict[str, torch.Tensor]:
    """Running mean of the model's floating-point weights (integer buffers are copied)."""
    state = model.state_dict()
    if avg is None:
        return {k: v.detach().clone() for k, v in state.items()}
    for k, v in state.items():
        if v.is_floating_point():
            avg[k].mul_(n / (n + 1)).add_(v.detach(), alpha=1 / (n + 1))
    return avg


def config_dict(cfg: TrainConfig) -> dict[str, object]:
    return asdict(cfg)
