"""Two-stage training of the multi-exit captioner (CapEEN, see algorithms.md §A.6).

1. Backbone: image projection + decoder, teacher-forced cross-entropy at the last exit (the
   EfficientNet CNN stays frozen and its features are computed once and cached).
2. Exits: backbone frozen, heads 1..L-1 trained with 0.5·CE(caption tokens) +
   0.5·KL(last exit's softmax ‖ exit softmax), averaged over exits.

Every stage is bounded by epochs *and* wall-clock seconds, so a build on a small shared CPU
finishes in a known time. Also here: teacher-forced per-token exit logits for the validation and
test splits (the cache `eeserve calibrate` fits policies on), and per-exit token accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from models import progress as build_progress
from models.build.caption_data import CaptionSplit
from models.captioner import MultiExitCaptioner
from models.image_encoder import preprocess


@dataclass(frozen=True)
class CaptionTrainConfig:
    backbone_epochs: int = 10  # stage 1 passes over the (image, caption) pairs
    exit_epochs: int = 4  # stage 2 passes
    batch_size: int = 32
    lr: float = 1e-3  # stage 1 (projection + decoder)
    exit_lr: float = 2e-3  # stage 2 (exit heads)
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps with linear warm-up
    kl_weight: float = 0.5  # stage 2: weight of KL to the last exit (CE gets 1 - kl_weight)
    freeze_cnn: bool = True  # keep the image encoder's feature extractor frozen (cache features)
    max_caption_tokens: int = 24  # caption tokens kept per training target (EOS included)
    backbone_seconds: float = 1e9  # wall-clock bound of stage 1
    exit_seconds: float = 1e9  # wall-clock bound of stage 2
    seed: int = 0


@dataclass
class CaptionTrainResult:
    seconds: float
    backbone_steps: int
    exit_steps: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Targets:
    """Teacher-forcing tensors for a list of captions."""

    input_ids: torch.Tensor  # (P, T) BOS + caption tokens, right-padded with PAD
    labels: torch.Tensor  # (P, T) exit-vocabulary index of the next token, -100 on padding
    image: torch.Tensor  # (P,) long: which image each caption describes


def make_targets(model: MultiExitCaptioner, captions: list[list[str]], max_tokens: int
                 ) -> Targets:
    """Tokenise every reference of every image: inputs [BOS] w1..wn, labels w1..wn [EOS]."""
    tok, cfg = model.tokenizer, model.config
    seqs, owners = [], []
    for i, refs in enumerate(captions):
        for c in refs:
            ids = tok(c, add_special_tokens=False)["input_ids"][: max_tokens - 1]
            seqs.append(ids)
            owners.append(i)
    t = max(len(s) for s in seqs) + 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else cfg.eos_token_id
    inputs = torch.full((len(seqs), t), pad, dtype=torch.long)
    labels = torch.full((len(seqs), t), -100, dtype=torch.long)
    index = model.vocab_index.cpu()
    for r, ids in enumerate(seqs):
        inputs[r, 0] = cfg.bos_token_id
        inputs[r, 1:len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        nxt = torch.tensor(ids + [cfg.eos_token_id], dtype=torch.long)
        labels[r, :len(nxt)] = index[nxt]
    labels[labels < 0] = -100  # tokens outside the caption vocabulary are not trained
    return Targets(inputs, labels, torch.tensor(owners, dtype=torch.long))


@torch.no_grad()
def image_features(model: MultiExitCaptioner, split: CaptionSplit, batch_size: int = 32,
                   dtype: torch.dtype = torch.float16, progress: bool = False) -> torch.Tensor:
    """Frozen encoder features of every image of `split`: (N, tokens, F), stored in `dtype`."""
    out = []
    model.encoder.eval()
    for s in range(0, len(split), batch_size):
        ims = [split.image(i) for i in range(s, min(len(split), s + batch_size))]
        px = preprocess(ims, model.config.image).to(model.device)
        out.append(model.encoder.features(px).to(dtype).cpu())  # (b, N, F)
        if progress and (s // batch_size) % 10 == 0:
            print(f"[eeserve] features {s + len(ims)}/{len(split)}", flush=True)
    return torch.cat(out)


def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for s in range(0, n, size):
        yield perm[s:s + size]


def _schedule(opt: torch.optim.Optimizer, step: int, total: int, warmup: float,
              base: float) -> None:
    w = max(1, int(total * warmup))
    f = step / w if step < w else 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))
    for g in opt.param_groups:
        g["lr"] = base * max(f, 0.02)


def _memory(model: MultiExitCaptioner, feats: torch.Tensor | None, split: CaptionSplit,
            idx: torch.Tensor) -> torch.Tensor:
    if feats is not None:
        return model.encoder.project(feats[idx].to(model.device).float())  # (b, N, H)
    px = preprocess([split.image(int(i)) for i in idx], model.config.image)
    return model.memory(px.to(model.device))


def train_captioner(model: MultiExitCaptioner, train: CaptionSplit, cfg: CaptionTrainConfig,
                    progress: bool = True) -> CaptionTrainResult:
    """Stage 1 then stage 2, each within its epoch and seconds bounds."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tg = make_targets(model, train.captions, cfg.max_caption_tokens)
    feats = image_features(model, train, progress=progress) if cfg.freeze_cnn else None
    if progress:
        print(f"[eeserve] {len(tg.image)} caption targets; features in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    history: list[dict[str, float]] = []
    steps1 = _stage(model, tg, feats, train, cfg, 1, gen, history, progress)
    steps2 = _stage(model, tg, feats, train, cfg, 2, gen, history, progress)
    model.eval()
    return CaptionTrainResult(time.perf_counter() - t0, steps1, steps2, history)


def _stage(model: MultiExitCaptioner, tg: Targets, feats: torch.Tensor | None,
           split: CaptionSplit, cfg: CaptionTrainConfig, stage: int, gen: torch.Generator,
           history: list[dict[str, float]], progress: bool) -> int:
    heads = set(id(p) for p in model.heads.parameters())
    cnn = set(id(p) for p in _cnn_params(model)) if cfg.freeze_cnn else set()
    params = []
    for p in model.parameters():
        trainable = (id(p) in heads) if stage == 2 else (id(p) not in heads and id(p) not in cnn)
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    if stage == 2:
        model.init_heads_from_final()
    epochs = cfg.backbone_epochs if stage == 1 else cfg.exit_epochs
    seconds = cfg.backbone_seconds if stage == 1 else cfg.exit_seconds
    lr = cfg.lr if stage == 1 else cfg.exit_lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    n = len(tg.image)
    total = epochs * math.ceil(n / cfg.batch_size)
    start, step = time.perf_counter(), 0
    model.train()
    if cfg.freeze_cnn:
        _cnn_eval(model)
    for epoch in range(epochs):
        run, count = 0.0, 0
        for idx in _batches(n, cfg.batch_size, gen):
            if time.perf_counter() - start > seconds:
                break
            _schedule(opt, step, total, cfg.warmup, lr)
            loss = _loss(model, tg, feats, split, idx, stage, cfg.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            run, count, step = run + float(loss.detach()), count + 1, step + 1
            build_progress.step(f"training stage {stage}", step, total, limit_s=seconds)
        if count:
            history.append({"stage": stage, "epoch": epoch + 1, "loss": round(run / count, 4),
                            "seconds": round(time.perf_counter() - start, 1)})
            if progress:
                print(f"[eeserve] stage {stage} epoch {epoch + 1}: loss {run / count:.4f} "
                      f"({time.perf_counter() - start:.0f}s)", flush=True)
        if time.perf_counter() - start > seconds:
            break
    for p in model.parameters():
        p.requires_grad_(True)
    return step


def _loss(model: MultiExitCaptioner, tg: Targets, feats: torch.Tensor | None,
          split: CaptionSplit, idx: torch.Tensor, stage: int, kl_weight: float) -> torch.Tensor:
    ids = tg.input_ids[idx].to(model.device)  # (b, T)
    labels = tg.labels[idx].to(model.device)  # (b, T)
    t = int((labels != -100).sum(1).max())
    ids, labels = ids[:, :t], labels[:, :t]
    mem = _memory(model, feats, split, tg.image[idx])
    if stage == 1:
        hs = model.hidden_states(mem, ids)
        logits = model.exit_logits(hs[-1], model.num_exits)  # (b, T, V')
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    with torch.no_grad():
        hs = model.hidden_states(mem, ids)
        final = model.exit_logits(hs[-1], model.num_exits)
    keep = labels != -100  # (b, T)
    p_final = F.softmax(final[keep], -1)  # (n, V')
    losses = []
    for k in range(1, model.num_exits):
        logits = model.exit_logits(hs[k - 1], k)[keep]  # (n, V')
        ce = F.cross_entropy(logits, labels[keep])
        kl = F.kl_div(F.log_softmax(logits, -1), p_final, reduction="batchmean")
        losses.append((1 - kl_weight) * ce + kl_weight * kl)
    return torch.stack(losses).mean()


def _cnn_params(model: MultiExitCaptioner) -> list[torch.nn.Parameter]:
    enc = model.encoder
    inner = getattr(enc, "cnn", None) or getattr(enc, "encoder", None)
    return list(inner.parameters()) if inner is not None else []


def _cnn_eval(model: MultiExitCaptioner) -> None:
    inner = getattr(model.encoder, "cnn", None) or getattr(model.encoder, "encoder", None)
    if inner is not None:
        inner.eval()  # frozen batch norm statistics


@torch.no_grad()
def exit_token_logits(model: MultiExitCaptioner, split: CaptionSplit, max_tokens: int,
                      feats: torch.Tensor | None = None, batch_size: int = 32
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced logits of every exit on every caption token of the first reference:
    (N_tokens, L, V') float32 and the gold next-token indices (N_tokens,)."""
    model.eval()
    tg = make_targets(model, [refs[:1] for refs in split.captions], max_tokens)
    outs, golds = [], []
    for s in range(0, len(tg.image), batch_size):
        idx = torch.arange(s, min(len(tg.image), s + batch_size))
        mem = _memory(model, feats, split, tg.image[idx])
        ids, labels = tg.input_ids[idx].to(model.device), tg.labels[idx].to(model.device)
        logits = model(mem, ids)  # (b, L, T, V')
        keep = labels != -100  # (b, T)
        outs.append(logits.permute(0, 2, 1, 3)[keep].float().cpu())  # (n, L, V')
        golds.append(labels[keep].cpu())
    return torch.cat(outs), torch.cat(golds)


def exit_token_accuracy(logits: torch.Tensor, gold: torch.Tensor) -> list[float]:
    """Per-exit teacher-forced next-token accuracy from (N, L, V') logits."""
    return [round(float((logits[:, k].argmax(-1) == gold).float().mean()), 4)
            for k in range(logits.shape[1])]


def config_dict(cfg: CaptionTrainConfig) -> dict[str, Any]:
    return asdict(cfg)


# ---- caption quality ------------------------------------------------------------------------
def caption_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, Any]:
    """BLEU-1..4 and CIDEr-D with the COCO caption toolkit (`pycocoevalcap`, pure-Python scorers,
    whitespace tokens, lower-cased), or BLEU-4 from `small_bleu` when it is not installed."""
    hyp = {i: [h.lower()] for i, h in enumerate(hypotheses)}
    refs = {i: [r.lower() for r in rs] for i, rs in enumerate(references)}
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return {"bleu4": small_bleu(hypotheses, references), "scorer": "eeserve small_bleu"}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the toolkit prints its progress
        bleu, _ = Bleu(4).compute_score(refs, hyp)
        cider, _ = Cider().compute_score(refs, hyp)
    return {"bleu1": round(bleu[0], 4), "bleu4": round(bleu[3], 4), "cider": round(cider, 4),
            "scorer": "pycocoevalcap (COCO caption toolkit) Bleu(4), Cider"}


def small_bleu(hypotheses: list[str], references: list[list[str]], n: int = 4) -> float:
    """Corpus BLEU-n (Papineni et al. 2002): clipped n-gram precisions, brevity penalty."""
    from collections import Counter

    match, total = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for h, rs in zip(hypotheses, references, strict=True):
        hw, rws = h.lower().split(), [r.lower().split() for r in rs]
        hyp_len += len(hw)
        ref_len += min((abs(len(r) - len(hw)), len(r)) for r in rws)[1]
        for k in range(1, n + 1):
            grams = Counter(tuple(hw[i:i + k]) for i in range(len(hw) - k + 1))
            best: Counter[tuple[str, ...]] = Counter()
            for r in rws:
                best |= Counter(tuple(r[i:i + k]) for i in range(len(r) - k + 1))
            match[k - 1] += sum(min(c, best[g]) for g, c in grams.items())
            total[k - 1] += max(0, len(hw) - k + 1)
    if min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total, strict=True)) / n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / max(1, hyp_len))
    return round(bp * math.exp(log_p), 4)
