"""Static depth ("DNN-kL"): every row exits at layer `layer`. Memoryless."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from policies.base import (
    Decision,
    EmptyState,
    ExitPolicy,
    MemorylessPolicy,
    PolicyState,
    check_int,
    merge_params,
    probabilities,
)


class StaticPolicy(MemorylessPolicy):
    name = "static"

    def __init__(self, num_exits: int, layer: int):
        super().__init__(num_exits)
        self.layer = check_int("static: layer", layer, 1, num_exits)

    def first_exit(self) -> int:
        return self.layer

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EmptyState)
        self.check_input(k, logits, state.rows.shape[0])
        pred = probabilities(logits).argmax(dim=-1)  # (B,)
        fire = torch.full_like(pred, int(k >= self.layer), dtype=torch.bool)  # (B,)
        return Decision(fire, pred, fire.double(), state)

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer}


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merged = merge_params("static", params, calibration, {"layer"})
    return StaticPolicy(num_exits, merged.get("layer", num_exits))
