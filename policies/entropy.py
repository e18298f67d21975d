"""DeeBERT / BranchyNet entropy rule: exit when 1 - H(p_k)/log C >= tau_k.

The normalised-entropy confidence lies in [0, 1] (1 = one-hot). One global threshold or one per
exit (`None` never fires). Memoryless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from policies.base import (
    Decision,
    EmptyState,
    ExitPolicy,
    PolicyError,
    PolicyState,
    check_number,
    merge_params,
    normalised_entropy_confidence,
    probabilities,
    register,
    threshold_value,
    thresholds_from,
)


class EntropyPolicy(ExitPolicy):
    name = "entropy"

    def __init__(self, num_exits: int, thresholds: Sequence[float | None]):
        super().__init__(num_exits)
        if len(thresholds) != num_exits:
            raise PolicyError(f"entropy: thresholds needs {num_exits} values, "
                              f"got {len(thresholds)}")
        self.thresholds = [None if t is None else
                           check_number(f"entropy: thresholds[{i}]", t, 0.0, 1.0)
                           for i, t in enumerate(thresholds)]

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PolicyState:
        return EmptyState(rows=torch.zeros(batch_size, dtype=torch.bool, device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EmptyState)
        self.check_input(k, logits, state.rows.shape[0])
        probs = probabilities(logits)  # (B, C)
        conf = normalised_entropy_confidence(probs)  # (B,)
        pred = probs.argmax(dim=-1)  # (B,)
        return Decision(conf >= threshold_value(self.thresholds[k - 1]), pred, conf, state)

    def params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds}


@register("entropy")
def _build(num_exits: int, params: Mapping[str, Any],
           calibration: Mapping[str, Any] | None) -> ExitPolicy:
    merged = merge_params("entropy", params, calibration, {"threshold", "thresholds"})
    return EntropyPolicy(num_exits, thresholds_from("entropy", merged, params, num_exits, 0.9,
                                                    0.0, 1.0))
