"""Save and load text-classifier artifacts (see models/artifact.py for the layout), and
`load_artifact`, which picks the loader by the manifest's kind from the table `LOADERS`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import torch
from transformers import AutoConfig, AutoTokenizer

from models.artifact import (
    ArtifactError,
    load_weights,
    read_manifest,
    save_weights,
    write_manifest,
)
from models.caption_loading import CAPTION_KIND, load_caption_artifact
from models.environment import stamp
from models.loaded_model import LoadedModel, resolve_device
from models.onnx_loading import load_onnx, onnx_refusal
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

__all__ = ["BACKENDS", "LOADERS", "TEXT_KIND", "BackendChoice", "LoadedModel", "load_artifact",
           "load_text_artifact", "resolve_device", "save_text_artifact"]

TEXT_KIND = "text-classifier"


@dataclass(frozen=True)
class BackendChoice:
    """What to run a text model on: `backend` torch, onnx or auto; `precision` fp32 or int8."""

    backend: str = "torch"
    precision: str = "fp32"
    onnx_threads: int = 1
    onnx_spinning: bool = False


BACKENDS = ("torch", "onnx", "auto")


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
    write_manifest(root, stamp(manifest, "build"))


def load_text_artifact(root: str | Path, device: str = "cpu", dtype: str = "float32",
                       verify: bool = True, backend: str | BackendChoice = "torch",
                       precision_check: bool = True) -> LoadedModel:
    """Load a text artifact after checking its manifest and hashes, on the chosen backend.

    torch: eval mode, on `device`. onnx: the artifact's per-layer graphs
    (models/build/onnx_export.py), refused with a one-line reason when missing, tampered, stale
    or failing parity, or when
    the precision has no calibration (unless `precision_check` is off: calibrating it).
    auto: onnx on a CPU when that would load, else torch.
    """
    choice = backend if isinstance(backend, BackendChoice) else BackendChoice(backend)
    if choice.backend not in BACKENDS:
        raise ArtifactError(f"backend {choice.backend!r}: choose one of {list(BACKENDS)}")
    root = Path(root)
    manifest = read_manifest(root, kind=TEXT_KIND, verify=verify)
    try:
        cfg_dict = json.loads((root / "backbone_config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        head = TextClassifierConfig(**manifest["head"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{root}: cannot rebuild the model ({e})".splitlines()[0]) from None
    name = manifest.get("name", root.name)
    on_cpu = resolve_device(device).type == "cpu"
    if choice.backend != "torch":
        why = onnx_refusal(root, manifest, choice.precision, on_cpu, precision_check, verify)
        if why is None:
            model, served = load_onnx(root, manifest, tokenizer, head, choice)
            return LoadedModel(name, TEXT_KIND, model, served, root, "onnx",
                               f"onnx {choice.precision}")
        if choice.backend == "onnx":
            raise ArtifactError(f"{root}: cannot serve on onnx: {why}")
        auto_why = f"auto chose torch: {why}"
    else:
        auto_why = "torch requested"
    if choice.precision != "fp32":
        raise ArtifactError(f"{root}: precision {choice.precision} runs on the onnx backend only")
    net = MultiExitTextClassifier.from_config(AutoConfig.for_model(**cfg_dict), tokenizer, head)
    load_weights(net, root)
    if net.num_exits != manifest.get("num_exits"):
        raise ArtifactError(f"{root}: manifest says {manifest.get('num_exits')} exits, "
                            f"weights have {net.num_exits}")
    net = net.to(resolve_device(device), dtype=getattr(torch, dtype)).eval()
    return LoadedModel(name, TEXT_KIND, net, manifest, root, "torch", auto_why)


def _load_text(root: str | Path, device: str, dtype: str,
               backend: str | BackendChoice) -> LoadedModel:
    return load_text_artifact(root, device, dtype, backend=backend)


def _load_captioner(root: str | Path, device: str, dtype: str,
                    backend: str | BackendChoice) -> LoadedModel:
    return load_caption_artifact(root, device, dtype)  # captioners run on torch


Loader = Callable[[str | Path, str, str, str | BackendChoice], LoadedModel]
LOADERS: Final[Mapping[str, Loader]] = {TEXT_KIND: _load_text, CAPTION_KIND: _load_captioner}


def load_artifact(root: str | Path, device: str = "cpu", dtype: str = "float32",
                  backend: str | BackendChoice = "torch") -> LoadedModel:
    """Load any eeserve artifact by its manifest kind (`backend` applies to text models)."""
    kind = read_manifest(root, verify=False).get("kind")
    loader = LOADERS.get(str(kind))
    if loader is None:
        raise ArtifactError(f"{root}: unknown artifact kind {kind!r}")
    return loader(root, device, dtype, backend)
