"""The validation and test texts an artifact was evaluated on, kept for parity and calibration.

    DIR/eval_texts.jsonl   {"split": "val"|"test", "text": ..., "label": int} per line

Backends other than the one that trained the model (ONNX fp32, int8) are checked and calibrated
on these rows. Artifacts built before this file existed are completed from their recipe's data,
checked against the manifest's data fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifact import ArtifactError
from models.build.data import TextDataset, load_movie_reviews, tiny_sentiment

EVAL_TEXTS = "eval_texts.jsonl"
SPLITS = ("val", "test")
# recipes whose data can be rebuilt without the user's file
RECIPE_DATA: dict[str, Callable[[], TextDataset]] = {
    "text-default": load_movie_reviews, "tiny-text": tiny_sentiment}


@dataclass(frozen=True)
class EvalTexts:
    texts: list[str]  # val rows then test rows
    labels: list[int]
    splits: dict[str, tuple[int, int]]  # split -> (start, stop) in `texts`
    source: str

    @property
    def rows(self) -> int:
        return len(self.texts)

    def split(self, name: str) -> tuple[list[str], list[int]]:
        a, b = self.splits[name]
        return self.texts[a:b], self.labels[a:b]


def write_eval_texts(root: Path, data: TextDataset) -> None:
    with open(root / EVAL_TEXTS, "w") as f:
        for name in SPLITS:
            part = getattr(data, name)
            for text, label in zip(part.texts, part.labels, strict=True):
                f.write(json.dumps({"split": name, "text": text, "label": label}) + "\n")


def load_eval_texts(root: Path, manifest: Mapping[str, Any]) -> EvalTexts:
    """Read DIR/eval_texts.jsonl, or rebuild it from the recipe's data (then write it)."""
    path = root / EVAL_TEXTS
    if not path.exists():
        _rebuild(root, manifest)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts: list[str] = []
    labels: list[int] = []
    splits: dict[str, tuple[int, int]] = {}
    for name in SPLITS:
        part = [r for r in rows if r.get("split") == name]
        splits[name] = (len(texts), len(texts) + len(part))
        texts += [str(r["text"]) for r in part]
        labels += [int(r["label"]) for r in part]
    return EvalTexts(texts, labels, splits, f"{EVAL_TEXTS} (val {len(texts) - _n(splits)} + "
                                            f"test {_n(splits)})")


def _n(splits: dict[str, tuple[int, int]]) -> int:
    a, b = splits["test"]
    return b - a


def _rebuild(root: Path, manifest: Mapping[str, Any]) -> None:
    recipe = (manifest.get("recipe") or {}).get("name")
    make = RECIPE_DATA.get(str(recipe))
    want = (manifest.get("data") or {}).get("sha256")
    if make is None:
        raise ArtifactError(f"{root}: no {EVAL_TEXTS} and recipe {recipe!r} has no rebuildable "
                            "data; rebuild the artifact with this eeserve")
    data = make()
    if want and data.fingerprint() != want:
        raise ArtifactError(f"{root}: no {EVAL_TEXTS}, and the recipe's data no longer matches "
                            "the manifest's fingerprint")
    write_eval_texts(root, data)
