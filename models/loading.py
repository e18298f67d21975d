"""Save and load text-classifier artifacts (see models/artifact.py for the layout)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from models.artifact import (
    ArtifactError,
    load_weights,
    read_manifest,
    save_weights,
    write_manifest,
)
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

TEXT_KIND = "text-classifier"


@dataclass
class LoadedModel:
    """A model ready for the engine, with its manifest."""

    name: str
    kind: str
    model: Any  # MultiExitTextClassifier or a captioner
    manifest: dict[str, Any]
    path: Path


def save_text_artifact(model: MultiExitTextClassifier, root: str | Path,
                       manifest: dict[str, Any]) -> None:
    """Write weights, encoder config, tokenizer and the manifest (with file hashes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_weights(model, root)
    (root / "backbone_config.json").write_text(model.backbone.config.to_json_string())
    model.tokenizer.save_pretrained(str(root / "tokenizer"))
    manifest = {**manifest, "kind": TEXT_KIND, "num_exits": model.num_exits,
                "head": asdict(model.config)}
    write_manifest(root, manifest)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArtifactError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def load_text_artifact(root: str | Path, device: str = "cpu", dtype: str = "float32",
                       verify: bool = True) -> LoadedModel:
    """Load a text artifact after checking its manifest and hashes; eval mode, on `device`."""
    root = Path(root)
    manifest = read_manifest(root, kind=TEXT_KIND, verify=verify)
    try:
        cfg_dict = json.loads((root / "backbone_config.json").read_text())
        backbone_cfg = AutoConfig.for_model(**cfg_dict)
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        head = TextClassifierConfig(**manifest["head"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{root}: cannot rebuild the model ({e})".splitlines()[0]) from None
    model = MultiExitTextClassifier.from_config(backbone_cfg, tokenizer, head)
    load_weights(model, root)
    if model.num_exits != manifest.get("num_exits"):
        raise ArtifactError(f"{root}: manifest says {manifest.get('num_exits')} exits, "
                            f"weights have {model.num_exits}")
    model = model.to(resolve_device(device), dtype=getattr(torch, dtype)).eval()
    return LoadedModel(manifest.get("name", root.name), TEXT_KIND, model, manifest, root)


def load_artifact(root: str | Path, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load any eeserve artifact by its manifest kind."""
    kind = read_manifest(root, verify=False).get("kind")
    if kind == TEXT_KIND:
        return load_text_artifact(root, device, dtype)
    if kind == "captioner":
        from models.caption_loading import load_caption_artifact  # optional module

        return load_caption_artifact(root, device, dtype)
    raise ArtifactError(f"{root}: unknown artifact kind {kind!r}")
