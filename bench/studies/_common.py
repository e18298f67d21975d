"""What the studies share: an artifact's cached splits, a calibrated policy replayed on a split,
medians with their range, promise breaks, and Markdown tables.

Most studies read the cached torch fp32 exit logits the build wrote (`exit_logits.safetensors`)
with one torch thread: `CACHED` is the settings their records carry.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from policies.costs import ExitCosts
    from policies.fit.calibration import Split
    from policies.replay import ReplayResult

CACHED: dict[str, Any] = {"backend": "torch", "precision": "fp32", "threads": 1}


def one_thread() -> None:
    """Studies time nothing in parallel: one torch thread, as the figures were made."""
    import torch

    torch.set_num_threads(1)


def load_splits(artifact: Path, *names: str) -> tuple[dict[str, Any], list[Split]]:
    """The artifact's (verified) manifest and its cached splits `names` ("val", "test")."""
    from models.artifact import read_manifest
    from policies.fit.calibration import load_split

    manifest = read_manifest(artifact)
    return manifest, [load_split(artifact, n, manifest) for n in names]


def subset(data: Split, rows: torch.Tensor) -> Split:
    """The rows `rows` of a split (same exit costs)."""
    from policies.fit.calibration import Split

    return Split(data.logits[rows], data.labels[rows], data.costs)


def replay_calibrated(name: str, calibration: Mapping[str, Any], logits: torch.Tensor,
                      labels: torch.Tensor, costs: ExitCosts | None = None,
                      offline: str = "raise") -> ReplayResult | None:
    """A calibrated policy (`manifest["policies"][name]`) through `build_policy` + `replay`,
    the serving path, on cached logits. An offline-only policy raises, or with
    `offline="skip"` gives None."""
    from policies.registry import build_policy
    from policies.replay import replay

    pol = build_policy(name, int(logits.shape[1]), None, calibration)
    if not pol.online and offline == "skip":
        return None
    return replay(pol, logits, labels, costs)


def held_out(name: str, calibration: Mapping[str, Any], data: Split) -> dict[str, float]:
    """Loss against the last exit (points) and layer / cost speed-up of a fitted policy on
    `data`."""
    res = replay_calibrated(name, calibration, data.logits, data.labels, data.costs)
    assert res is not None
    return {"loss_pt": 100 * res.accuracy_loss(), "layer_x": res.layer_speedup(),
            "cost_x": res.cost_speedup()}


def broken(losses_pt: Iterable[float], tolerance_pt: float) -> int:
    """How many held-out losses (points) exceed the promised tolerance."""
    return sum(v > tolerance_pt + 1e-9 for v in losses_pt)


def median_range(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """{"median" (rounded), "min", "max"} of a few runs."""
    return {"median": round(statistics.median(values), digits), "min": min(values),
            "max": max(values)}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table; an empty cell is written `| |`."""
    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "---|" * len(header),
                      *(line(r) for r in rows)])
