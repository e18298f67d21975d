"""Cost of reaching each exit: measured cumulative latency from the manifest, or layer counts.

Cost of exit k = embed + layers 1..k + k exit heads (the stepwise path evaluates every head it
passes). `manifest["latency"]` (models/build/profiling.py) holds per-batch-size medians; when it is
absent or malformed the costs fall back to layer counts 1..K.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.base import PolicyError


@dataclass(frozen=True)
class ExitCosts:
    """Cumulative cost of every exit, in `unit`."""

    cumulative: tuple[float, ...]  # (K,) cost of a sample that leaves at exit k
    unit: str  # "ms" or "layers"
    source: str  # where the numbers come from, for reports

    @property
    def num_exits(self) -> int:
        return len(self.cumulative)

    @property
    def full(self) -> float:
        return self.cumulative[-1]

    def fractions(self) -> list[float]:
        """Costs as fractions of the last exit's cost."""
        return [c / self.full for c in self.cumulative]


def layer_costs(num_exits: int) -> ExitCosts:
    return ExitCosts(tuple(float(k) for k in range(1, num_exits + 1)), "layers", "layer counts")


def custom_costs(values: Sequence[float], unit: str = "ms", source: str = "given") -> ExitCosts:
    """Validated cumulative costs (strictly positive, non-decreasing)."""
    vals = tuple(float(v) for v in values)
    if not vals or vals[0] <= 0 or any(b < a for a, b in zip(vals, vals[1:], strict=False)):
        raise PolicyError(f"costs must be positive and non-decreasing, got {list(vals)}")
    return ExitCosts(vals, unit, source)


def latency_costs(latency: Mapping[str, Any] | None, num_exits: int,
                  batch_size: int | None = None) -> ExitCosts:
    """Cumulative per-sample latency at `batch_size` (default: the largest measured)."""
    if not latency or not isinstance(latency.get("per_layer_ms"), Mapping):
        return layer_costs(num_exits)
    per_layer = latency["per_layer_ms"]
    sizes = sorted(int(s) for s in per_layer if str(s).isdigit())
    if not sizes:
        return layer_costs(num_exits)
    bs = batch_size if batch_size is not None else sizes[-1]
    if bs not in sizes:
        raise PolicyError(f"no latency measured at batch size {bs}; have {sizes}")
    layers = per_layer[str(bs)]
    if not isinstance(layers, Sequence) or len(layers) != num_exits:
        return layer_costs(num_exits)
    embed = float((latency.get("embed_ms") or {}).get(str(bs), 0.0))
    head = float((latency.get("head_ms") or {}).get(str(bs), 0.0))
    total, out = embed, []
    for k, ms in enumerate(layers, start=1):
        total += float(ms)
        out.append((total + k * head) / bs)
    src = f"measured latency ({latency.get('device', '?')}, batch {bs}, ms/sample)"
    return custom_costs(out, "ms", src)


def manifest_costs(manifest: Mapping[str, Any], num_exits: int,
                   batch_size: int | None = None) -> ExitCosts:
    return latency_costs(manifest.get("latency"), num_exits, batch_size)
