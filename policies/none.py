"""No early exit: every row runs to the last exit (the engine's last-exit rule fires there)."""

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
    merge_params,
    probabilities,
)


class NoExitPolicy(MemorylessPolicy):
    name = "none"

    def first_exit(self) -> int:
        return self.num_exits

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EmptyState)
        self.check_input(k, logits, state.rows.shape[0])
        pred = probabilities(logits).argmax(dim=-1)  # (B,)
        never = torch.zeros_like(pred, dtype=torch.bool)  # (B,)
        return Decision(never, pred, never.double(), state)

    def params(self) -> dict[str, Any]:
        return {}


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merge_params("none", params, calibration, set())
    return NoExitPolicy(num_exits)
