"""Max-softmax confidence (MSDNet's "max score", algorithms.md §C): exit when max_c p_k[c] >= tau_k.

One global threshold or one per exit (`None` never fires); thresholds lie in [0, 1]. Memoryless.
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
    probabilities,
    register,
    threshold_value,
    thresholds_from,
)

DEFAULT_THRESHOLD = 0.9


class MaxProbPolicy(ExitPolicy):
    name = "maxprob"

    def __init__(self, num_exits: int, thresholds: Sequence[float | None]):
        super().__init__(num_exits)
        if len(thresholds) != num_exits:
            raise PolicyError(f"maxprob: thresholds needs {num_exits} values, "
                              f"got {len(thresholds)}")
        self.thresholds = [None if t is None else
                           check_number(f"maxprob: thresholds[{i}]", t, 0.0, 1.0)
                           for i, t in enumerate(thresholds)]

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PolicyState:
        return EmptyState(rows=torch.zeros(batch_size, dtype=torch.bool, device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EmptyState)
        self.check_input(k, logits, state.rows.shape[0])
        conf, pred = probabilities(logits).max(dim=-1)  # (B,), (B,)
        return Decision(conf >= threshold_value(self.thresholds[k - 1]), pred, conf, state)

    def params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds}


@register("maxprob")
def _build(num_exits: int, params: Mapping[str, Any],
           calibration: Mapping[str, Any] | None) -> ExitPolicy:
    merged = merge_params("maxprob", params, calibration, {"threshold", "thresholds"})
    return MaxProbPolicy(num_exits, thresholds_from("maxprob", merged, params, num_exits,
                                                    DEFAULT_THRESHOLD, 0.0, 1.0))
