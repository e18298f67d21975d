"""Exits for a fine-tuned classifier the user already trusts (DeeBERT's second stage).

    eeserve train --from-classifier DIR --data FILE --out OUT

The user's `AutoModelForSequenceClassification` is kept exactly: its encoder and its own
classification head (models/hf_heads.py) become the model's layers and last exit, so full depth
answers as their model does. The encoder is frozen, so it runs once over the data
(`output_hidden_states`) and the mean-pooled features of layers 1..L-1 plus the model's own
logits are cached; exit heads 1..L-1 then train on that cache in seconds, with
cross-entropy on the labels plus `distill` * T^2 * KL(teacher || exit) toward the model's outputs.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from models.build.backbones import check_family
from models.build.data import DataError, TextDataset, TextSplit, load_data
from models.build.options import BuildOptions
from models.build.text_recipes import write_text
from models.build.training import exit_accuracy
from models.hashing import sha256_file
from models.hf_heads import HF_HEAD_KINDS, head_from_classifier
from models.loading import resolve_device
from models.text_classifier import ExitHead, MultiExitTextClassifier, TextClassifierConfig


@dataclass(frozen=True)
class HeadTrainConfig:
    epochs: int = 40  # passes over the cached features (cheap); best validation epoch kept
    batch_size: int = 64
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    distill: float = 1.0  # weight of the KL term toward the classifier's own outputs
    temperature: float = 2.0
    max_length: int = 128  # tokens per text when caching features (and when serving)
    seed: int = 42
    cache_batch_size: int = 32  # texts per encoder pass while caching


@dataclass
class Features:
    """The frozen encoder's outputs for one split."""

    pooled: torch.Tensor  # (N, L-1, H) mean-pooled hidden states after layers 1..L-1
    teacher: torch.Tensor  # (N, C) the classifier's own logits (the last exit)
    labels: torch.Tensor  # (N,) int64


def load_classifier(path: str | Path) -> tuple[Any, Any, str]:
    """(classifier, tokenizer, head kind) from a `save_pretrained` dir, or a one-line error."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"--from-classifier {path}: no config.json (save the model with "
                         "save_pretrained)")
    cfg = AutoConfig.from_pretrained(str(p))
    check_family(cfg.model_type, f"--from-classifier {path}")
    archs = cfg.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"--from-classifier {path}: {archs or 'no architectures'} is not a "
                         "sequence classifier (AutoModelForSequenceClassification)")
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError, TypeError):
        raise ValueError(f"--from-classifier {path}: no tokenizer (save it next to the model "
                         "with tokenizer.save_pretrained)") from None
    try:
        clf = AutoModelForSequenceClassification.from_pretrained(str(p)).eval()
    except OSError as e:
        raise ValueError(f"--from-classifier {path}: cannot load the weights "
                         f"({str(e).splitlines()[0]})") from None
    return clf, tok, HF_HEAD_KINDS[cfg.model_type]


def to_multi_exit(clf: Any, tok: Any, kind: str, max_length: int,
                  dropout: float = 0.1) -> MultiExitTextClassifier:
    """The classifier's encoder with fresh exit heads 1..L-1 and its own head as exit L.

    The encoder and the last head share their modules with `clf` (nothing is copied)."""
    base = getattr(clf, clf.base_model_prefix)
    head = head_from_classifier(kind, clf)
    if kind == "hf-bert":
        base.pooler = None  # it lives in the last head now
    cfg = TextClassifierConfig(num_labels=int(clf.config.num_labels), dropout=dropout,
                               max_length=max_length, last_head=kind)
    model = MultiExitTextClassifier(base, tok, replace(cfg, last_head="exit"))
    model.config = cfg
    model.heads[-1] = head
    return model


def align_labels(data: TextDataset, id2label: dict[int, str], where: str) -> TextDataset:
    """Renumber the data's labels to the classifier's ids (by name, or by integer id)."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    mapping: dict[int, int] = {}
    for j, n in enumerate(data.label_names):
        if n in names:
            mapping[j] = names.index(n)
        elif n.isdigit() and int(n) < len(names):
            mapping[j] = int(n)
        else:
            raise DataError(f"{where}: label {n!r} is not one of the classifier's labels "
                            f"{names} (or an id 0..{len(names) - 1})")

    def remap(s: TextSplit) -> TextSplit:
        return TextSplit(list(s.texts), [mapping[y] for y in s.labels])

    return TextDataset(data.name, names, remap(data.train), remap(data.val), remap(data.test),
                       source=data.source)


@torch.no_grad()
def cache_features(model: MultiExitTextClassifier, split: TextSplit,
                   cfg: HeadTrainConfig) -> Features:
    """One pass of the frozen encoder: pooled features of layers 1..L-1 and the last exit."""
    model.eval()
    backbone: Any = model.backbone
    n, k, h = len(split), model.num_exits, int(backbone.config.hidden_size)
    pooled = torch.empty(n, k - 1, h)
    teacher = torch.empty(n, model.config.num_labels)
    order = sorted(range(n), key=lambda i: len(split.texts[i]))
    for s in range(0, n, cfg.cache_batch_size):
        idx = order[s:s + cfg.cache_batch_size]
        enc = model.tokenizer([split.texts[i] for i in idx], padding=True, truncation=True,
                              max_length=cfg.max_length, return_tensors="pt").to(model.device)
        out = model.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             output_hidden_states=True)
        m = enc["attention_mask"].unsqueeze(-1).float()  # (b, T, 1)
        hs = torch.stack(out.hidden_states[1:k], dim=1)  # (b, L-1, T, H)
        pooled[idx] = ((hs * m.unsqueeze(1)).sum(2) / m.sum(1, keepdim=True).clamp(min=1.0)
                       ).float().cpu()  # (b, L-1, H)
        last = out.hidden_states[k]  # (b, T, H)
        teacher[idx] = model.heads[-1](last, enc["attention_mask"]).float().cpu()  # (b, C)
    return Features(pooled, teacher, torch.tensor(split.labels, dtype=torch.long))


def _pooled_logits(head: ExitHead, pooled: torch.Tensor) -> torch.Tensor:
    """ExitHead.forward after its mean pooling (same modules, same order)."""
    return head.out(head.drop(torch.tanh(head.dense(head.drop(pooled)))))


def exits_from_features(model: MultiExitTextClassifier, f: Features) -> torch.Tensor:
    """(N, L, C) logits of every exit from cached features (eval mode)."""
    heads = [h for h in model.heads[:-1] if isinstance(h, ExitHead)]
    with torch.no_grad():
        outs = [_pooled_logits(h, f.pooled[:, i]) for i, h in enumerate(heads)]  # (N, C) each
    return torch.stack([*outs, f.teacher], dim=1)


def train_heads(model: MultiExitTextClassifier, train: Features, val: Features,
                cfg: HeadTrainConfig) -> list[dict[str, Any]]:
    """Train exit heads 1..L-1 on cached features; each keeps its best-validation epoch."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    heads = model.heads[:-1]
    exit_heads = [h for h in heads if isinstance(h, ExitHead)]
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    t = cfg.temperature
    best = [-1.0] * len(heads)
    states = [copy.deepcopy(h.state_dict()) for h in heads]
    history = []
    for epoch in range(cfg.epochs):
        heads.train()
        order = list(range(len(train.labels)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            idx = torch.tensor(order[s:s + cfg.batch_size])
            y = train.labels[idx]  # (b,)
            target = F.softmax(train.teacher[idx] / t, dim=-1)  # (b, C)
            loss = torch.zeros(())
            for i, h in enumerate(exit_heads):
                logits = _pooled_logits(h, train.pooled[idx, i])  # (b, C)
                kl = F.kl_div(F.log_softmax(logits / t, -1), target, reduction="batchmean")
                loss = loss + F.cross_entropy(logits, y) + cfg.distill * t * t * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        heads.eval()
        accs = exit_accuracy(exits_from_features(model, val), val.labels)
        history.append({"epoch": epoch + 1, "loss": float(loss.item()), "val_exits": accs})
        for i, head in enumerate(heads):
            if accs[i] > best[i]:
                best[i], states[i] = accs[i], copy.deepcopy(head.state_dict())
    for head, st in zip(heads, states, strict=True):
        head.load_state_dict(st)
    model.eval()
    return history


@torch.no_grad()
def classifier_logits(clf: Any, tok: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """(B, C) logits of the untouched classifier, tokenised as eeserve does."""
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return clf(**enc).logits.float()


@torch.no_grad()
def last_exit_parity(model: MultiExitTextClassifier, reference: torch.Tensor,
                     texts: list[str]) -> float:
    """Max |logit difference| between the stepwise last exit and the original classifier."""
    ours = model.all_exit_logits(model.encode(texts))[:, -1]  # (B, C)
    return float((ours - reference).abs().max())


def _config(opts: BuildOptions) -> HeadTrainConfig:
    o = dict(opts.overrides)
    if "lr" in o:
        raise ValueError("--lr: the encoder is frozen with --from-classifier; "
                         "set the exit heads' rate with --head-lr")
    if opts.epochs is not None:
        o["epochs"] = opts.epochs
    if opts.seed is not None:
        o["seed"] = opts.seed
    known = set(asdict(HeadTrainConfig()))
    bad = sorted(set(o) - known)
    if bad:
        raise ValueError(f"--from-classifier does not take {bad}")
    return HeadTrainConfig(**o)


def from_classifier(opts: BuildOptions) -> dict[str, Any]:
    """Exits 1..L-1 for a fine-tuned classifier; its encoder and head are kept exactly."""
    if not opts.source:
        raise ValueError("the from-classifier recipe needs --from-classifier DIR")
    if not opts.data_file:
        raise ValueError("--from-classifier needs --data FILE: labelled texts (CSV/TSV/JSONL with "
                         "text,label columns, labels named as the classifier's) to train the exits")
    cfg = _config(opts)
    clf, tok, kind = load_classifier(opts.source)
    data = align_labels(load_data(opts.data_file), clf.config.id2label, opts.data_file)
    probe = data.test.texts[:32]
    reference = classifier_logits(clf, tok, probe, cfg.max_length)  # before any rewiring
    torch.manual_seed(cfg.seed)
    model = to_multi_exit(clf, tok, kind, cfg.max_length)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.heads[-1].parameters():
        p.requires_grad_(False)
    start = time.perf_counter()
    if opts.progress:
        print(f"[eeserve] caching features of {model.num_exits} layers for "
              f"{len(data.train) + len(data.val) + len(data.test)} texts", flush=True)
    model.to(resolve_device(opts.device))  # the one encoder pass runs on the chosen device
    feats = [cache_features(model, s, cfg) for s in (data.train, data.val, data.test)]
    model.cpu()  # the heads train on the cached (CPU) features
    cached_s = time.perf_counter() - start
    history = train_heads(model, feats[0], feats[1], cfg)
    seconds = time.perf_counter() - start
    if opts.progress:
        print(f"[eeserve] features cached in {cached_s:.0f}s, heads trained in "
              f"{seconds - cached_s:.0f}s", flush=True)
    parity = last_exit_parity(model, reference, probe)
    logits = (exits_from_features(model, feats[1]), exits_from_features(model, feats[2]))
    src = Path(opts.source)
    weights = src / "model.safetensors"
    backbone = {"id": str(src), "model_type": clf.config.model_type,
                "sha256": sha256_file(weights) if weights.exists() else None,
                "classifier_head": kind}
    info = {"name": "from-classifier", "train": asdict(cfg), "train_seconds": round(seconds, 1),
            "feature_cache_seconds": round(cached_s, 1), "epochs_run": cfg.epochs,
            "history": history}
    extra = {"last_exit_parity": {"texts": len(probe), "max_abs_diff": parity}}
    return write_text(opts, opts.out.name, model, data, info, logits, backbone, extra)
