"""Model artifacts: one directory per model, weights in safetensors, a checked manifest.

    DIR/manifest.json            format version, kind, labels, exits, recipe, data fingerprint,
                                 per-exit accuracy, per-layer latency, fitted policies, file hashes
    DIR/model.safetensors        all weights (backbone + exit heads); nothing is ever unpickled
    DIR/backbone_config.json     the encoder's transformers config (AutoConfig)
    DIR/tokenizer/               the tokenizer (AutoTokenizer)
    DIR/exit_logits.safetensors  cached logits of every exit: {split}_logits (N, K, C) float32,
                                 {split}_labels (N,) int64 for split in val, test

`manifest["files"]` maps every file (except the manifest) to its sha256; loading refuses an
artifact whose version, kind or hashes do not match, with a one-line reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.errors import ArtifactError
from models.hashing import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
LOGITS = "exit_logits.safetensors"


def _walk_files(root: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = str((Path(dirpath) / f).relative_to(root))
            if rel != MANIFEST and not rel.endswith(".part"):
                out.append(rel)
    return sorted(out)


def write_manifest(root: Path, manifest: dict[str, Any], rehash: bool = True) -> None:
    """Write manifest.json atomically; with `rehash`, recompute every file's sha256 first."""
    if rehash:
        manifest["files"] = {f: sha256_file(root / f) for f in _walk_files(root)}
    manifest["format_version"] = FORMAT_VERSION
    tmp = root / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(root / MANIFEST)


def read_manifest(root: str | Path, kind: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Read and check a manifest: version, kind and (with `verify`) every file's sha256."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a model directory")
    if not path.exists():
        raise ArtifactError(f"{root}: no {MANIFEST}; not an eeserve artifact")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: manifest is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {version!r}, this eeserve reads "
                            f"{FORMAT_VERSION}")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{root}: kind {manifest.get('kind')!r}, expected {kind!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError(f"{path}: no file hashes for {WEIGHTS}")
    if verify:
        for rel, digest in files.items():
            f = root / rel
            if not f.exists():
                raise ArtifactError(f"{root}: missing file {rel}")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{root}: {rel} sha256 mismatch (corrupt or tampered)")
    return manifest


def update_manifest(root: str | Path, **changes: Any) -> dict[str, Any]:
    """Merge top-level keys into an existing manifest (used by `eeserve calibrate`)."""
    root = Path(root)
    manifest = read_manifest(root, verify=False)
    manifest.update(changes)
    write_manifest(root, manifest, rehash=False)
    return manifest


@dataclass(frozen=True)
class ExitLogits:
    """Cached outputs of every exit for one split, for offline fitting and replay."""

    logits: torch.Tensor  # (N, K, C) float32 logits of every exit
    labels: torch.Tensor  # (N,) int64 gold labels

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[1])


def save_exit_logits(root: Path, splits: dict[str, ExitLogits], file: str = LOGITS) -> None:
    tensors = {}
    for name, s in splits.items():
        tensors[f"{name}_logits"] = s.logits.float().contiguous()
        tensors[f"{name}_labels"] = s.labels.long().contiguous()
    save_file(tensors, str(root / file))


def load_exit_logits(root: str | Path, split: str, file: str = LOGITS) -> ExitLogits:
    """Load cached exit logits of `split` ("val" or "test") from `file`."""
    path = Path(root) / file
    if not path.exists():
        raise ArtifactError(f"{root}: no cached exit logits ({file}); retrain or re-cache")
    t = load_file(str(path))
    if f"{split}_logits" not in t:
        have = sorted(k[:-7] for k in t if k.endswith("_logits"))
        raise ArtifactError(f"{path}: no split {split!r}; have {have}")
    return ExitLogits(t[f"{split}_logits"], t[f"{split}_labels"])


def save_weights(module: torch.nn.Module, root: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(root / WEIGHTS), metadata={"format": "pt"})


def load_weights(module: torch.nn.Module, root: Path) -> None:
    state = load_file(str(root / WEIGHTS))
    own = module.state_dict()
    # older MPNet artifacts carry the encoder's unused pooler; the text model no longer builds it
    state = {k: v for k, v in state.items()
             if k in own or not k.startswith("backbone.pooler.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{root}: weights do not fit the architecture (missing "
                            f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
