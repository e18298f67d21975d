"""What a loader hands the engine (`LoadedModel`) and the device rule every loader shares.

Both loaders (models/loading.py for text, models/caption_loading.py for captioners) import it;
models/loading.py re-exports it and picks the loader by the manifest's kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.artifact import ArtifactError


@dataclass
class LoadedModel:
    """A model ready for the engine, with its manifest (the policies of what serves)."""

    name: str
    kind: str
    model: Any  # a StepModel (MultiExitTextClassifier, OnnxTextModel) or a captioner
    manifest: dict[str, Any]
    path: Path
    backend: str = "torch"
    why: str = ""  # why this backend was chosen (for `auto`)


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda when available, else cpu; an unavailable cuda is refused in one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArtifactError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)
