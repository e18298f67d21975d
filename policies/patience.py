"""PABEE (Zhou et al., NeurIPS 2020): exit once the argmax has stayed the same `patience` times.

Per row: counter = number of consecutive exits whose argmax equals the previous exit's (reset to 0
on a change; 0 at exit 1). Exit at k when counter >= patience. State: (prev_pred, counter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from policies.base import (
    Decision,
    ExitPolicy,
    PolicyState,
    check_int,
    merge_params,
    probabilities,
)


@dataclass(frozen=True)
class PatienceState(PolicyState):
    prev_pred: torch.Tensor  # (B,) long: previous exit's argmax, -1 before exit 1
    counter: torch.Tensor  # (B,) long: consecutive unchanged argmaxes so far


class PatiencePolicy(ExitPolicy):
    name = "patience"

    def __init__(self, num_exits: int, patience: int):
        super().__init__(num_exits)
        self.patience = check_int("patience: patience", patience, 1, max(num_exits, 1))

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PatienceState:
        return PatienceState(
            prev_pred=torch.full((batch_size,), -1, dtype=torch.long, device=device),
            counter=torch.zeros(batch_size, dtype=torch.long, device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, PatienceState)
        self.check_input(k, logits, state.counter.shape[0])
        pred = probabilities(logits).argmax(dim=-1)  # (B,)
        counter = torch.where(pred == state.prev_pred, state.counter + 1,
                              torch.zeros_like(state.counter))  # (B,)
        return Decision(counter >= self.patience, pred, counter.double(),
                        PatienceState(prev_pred=pred, counter=counter))

    def params(self) -> dict[str, Any]:
        return {"patience": self.patience}


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merged = merge_params("patience", params, calibration, {"patience"})
    return PatiencePolicy(num_exits, merged.get("patience", min(3, num_exits)))
