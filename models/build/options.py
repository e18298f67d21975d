"""What every recipe takes (`BuildOptions`) and how a build reports a stage (`log`).

A recipe is a function `BuildOptions -> manifest dict`; the table of them by name is
`models.build.recipes.RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import progress as build_progress


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    device: str = "auto"
    data_file: str | None = None  # user CSV/JSONL with text,label instead of the recipe's data
    progress: bool = True
    epochs: int | None = None  # override the recipe's epoch bound
    freeze_backbone: bool = False
    seed: int | None = None  # override the recipe's training seed (head init, order, dropout)
    backbone: str | None = None  # `backbone` recipe: a known name or a local encoder directory
    source: str | None = None  # `from-classifier` recipe: a fine-tuned classifier directory
    # TrainConfig fields by name (--set NAME=VALUE, --batch-size, --lr, --distill, ...)
    overrides: Mapping[str, Any] = field(default_factory=dict)


Recipe = Callable[[BuildOptions], dict[str, Any]]


def log(opts: BuildOptions, msg: str) -> None:
    """One build stage: to the progress file (models/progress.py) and, unless quiet, stdout."""
    build_progress.stage(msg)
    if opts.progress:
        print(f"[eeserve] {msg}", flush=True)
