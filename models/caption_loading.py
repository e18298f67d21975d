"""Build, save and load captioner artifacts (layout in models/artifact.py, kind "captioner").

    DIR/model.safetensors       image encoder + projection + decoder + exit heads
    DIR/decoder_config.json     the GPT-2 decoder config (GPT2Config)
    DIR/encoder_config.json     the vision encoder config (AutoConfig; kind "hf-vision" only)
    DIR/tokenizer/              the tokenizer (AutoTokenizer)
    DIR/manifest.json           kind "captioner", num_exits, `captioner` (CaptionerConfig), recipe,
                                caption quality per exit, latency, policies, file hashes

Two sources: a Hugging Face `VisionEncoderDecoderModel` directory (ViT + GPT-2 style) with exit
heads trained by eeserve (`captioner_from_ved`), and EfficientNet-Lite0 + a small GPT-2 decoder
(`efficientnet_captioner`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderModel,
)

from models.artifact import WEIGHTS, ArtifactError, read_manifest, write_manifest
from models.captioner import CaptionerConfig, MultiExitCaptioner
from models.environment import stamp
from models.image_encoder import EfficientNetEncoder, HFVisionEncoder, ImageConfig
from models.loaded_model import LoadedModel, resolve_device

CAPTION_KIND = "captioner"


def caption_vocab(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str],
                  eos_token_id: int) -> tuple[int, ...]:
    """Token ids used by the training captions, plus EOS: what the exits score."""
    ids = {eos_token_id}
    for c in captions:
        ids.update(tokenizer(c, add_special_tokens=False)["input_ids"])
    return tuple(sorted(ids))


def captioner_from_ved(ved: VisionEncoderDecoderModel, tokenizer: PreTrainedTokenizerBase,
                       config: CaptionerConfig) -> MultiExitCaptioner:
    """Wrap a VisionEncoderDecoderModel (GPT-2 decoder with cross-attention) with exit heads."""
    proj = getattr(ved, "enc_to_dec_proj", None)
    encoder = HFVisionEncoder(ved.encoder, proj)
    if not isinstance(ved.decoder, GPT2LMHeadModel):
        raise ValueError(f"unsupported decoder {type(ved.decoder).__name__}; need GPT-2")
    return MultiExitCaptioner(encoder, ved.decoder, tokenizer, config)


def load_ved_dir(path: str | Path, captions: Sequence[str], max_tokens: int = 32
                 ) -> MultiExitCaptioner:
    """A VisionEncoderDecoderModel directory (weights + tokenizer) → captioner with fresh heads
    over the vocabulary of `captions`."""
    ved = VisionEncoderDecoderModel.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    dcfg = ved.decoder.config
    bos = dcfg.bos_token_id if dcfg.bos_token_id is not None else tok.bos_token_id
    eos = dcfg.eos_token_id if dcfg.eos_token_id is not None else tok.eos_token_id
    size = int(getattr(ved.encoder.config, "image_size", 224))
    cfg = CaptionerConfig(vocab_ids=caption_vocab(tok, captions, eos), bos_token_id=bos,
                          eos_token_id=eos, max_tokens=max_tokens, encoder="hf-vision",
                          image=ImageConfig(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    model = captioner_from_ved(ved, tok, cfg)
    model.init_heads_from_final()
    return model


def efficientnet_captioner(decoder_cfg: GPT2Config, tokenizer: PreTrainedTokenizerBase,
                           config: CaptionerConfig, weights: str | Path | None = None
                           ) -> MultiExitCaptioner:
    """EfficientNet-Lite0 (pretrained `weights` when given) + a GPT-2 decoder from `decoder_cfg`."""
    enc = EfficientNetEncoder(int(decoder_cfg.n_embd), config.image.size)
    if weights is not None:
        enc.load_pretrained(weights)
    return MultiExitCaptioner(enc, GPT2LMHeadModel(decoder_cfg), tokenizer, config)


def save_weights(model: MultiExitCaptioner, root: Path) -> None:
    """model.safetensors without the tied lm_head (it is the token embedding)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k not in _tied(model)}
    save_file(state, str(root / WEIGHTS), metadata={"format": "pt"})


def load_weights(model: MultiExitCaptioner, root: Path) -> None:
    state = load_file(str(root / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(model)]
    if missing or unexpected:
        raise ArtifactError(f"{root}: weights do not fit the architecture (missing "
                            f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def _tied(model: MultiExitCaptioner) -> set[str]:
    w, e = model.decoder.lm_head.weight, model.decoder.transformer.wte.weight
    return {"decoder.lm_head.weight"} if w.data_ptr() == e.data_ptr() else set()


def save_caption_artifact(model: MultiExitCaptioner, root: str | Path,
                          manifest: dict[str, Any]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_weights(model, root)
    (root / "decoder_config.json").write_text(model.decoder.config.to_json_string())
    if isinstance(model.encoder, HFVisionEncoder):
        enc_cfg = model.encoder.encoder.config
        (root / "encoder_config.json").write_text(enc_cfg.to_json_string())
        manifest = {**manifest, "encoder_projection": not isinstance(model.encoder.proj,
                                                                      torch.nn.Identity)}
    model.tokenizer.save_pretrained(str(root / "tokenizer"))
    manifest = {**manifest, "kind": CAPTION_KIND, "num_exits": model.num_exits,
                "captioner": model.config.to_dict()}
    write_manifest(root, stamp(manifest, "build"))


def build_from_manifest(root: Path, manifest: dict[str, Any]) -> MultiExitCaptioner:
    """The architecture (random weights) an artifact's configs describe."""
    cfg = CaptionerConfig.from_dict(manifest["captioner"])
    dec_cfg = GPT2Config.from_dict(json.loads((root / "decoder_config.json").read_text()))
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    if cfg.encoder == "efficientnet-lite0":
        return efficientnet_captioner(dec_cfg, tok, cfg)
    if cfg.encoder == "hf-vision":
        enc_cfg = AutoConfig.for_model(**json.loads((root / "encoder_config.json").read_text()))
        enc = AutoModel.from_config(enc_cfg)  # as VisionEncoderDecoderModel builds it
        proj = torch.nn.Linear(int(enc_cfg.hidden_size), int(dec_cfg.n_embd)) \
            if manifest.get("encoder_projection") else None
        return MultiExitCaptioner(HFVisionEncoder(enc, proj), GPT2LMHeadModel(dec_cfg), tok, cfg)
    raise ArtifactError(f"{root}: unknown captioner encoder {cfg.encoder!r}")


def load_caption_artifact(root: str | Path, device: str = "cpu", dtype: str = "float32",
                          verify: bool = True) -> LoadedModel:
    """Load a captioner artifact after checking its manifest and hashes; eval mode, on `device`."""
    root = Path(root)
    manifest = read_manifest(root, kind=CAPTION_KIND, verify=verify)
    try:
        model = build_from_manifest(root, manifest)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise ArtifactError(f"{root}: cannot rebuild the captioner ({e})".splitlines()[0]) \
            from None
    load_weights(model, root)
    if model.num_exits != manifest.get("num_exits"):
        raise ArtifactError(f"{root}: manifest says {manifest.get('num_exits')} exits, "
                            f"weights have {model.num_exits}")
    model = model.to(resolve_device(device), dtype=getattr(torch, dtype)).eval()
    return LoadedModel(manifest.get("name", root.name), CAPTION_KIND, model, manifest, root)
