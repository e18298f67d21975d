"""Max-softmax confidence (MSDNet's "max score"): exit when max_c p_k[c] >= tau_k.

One global threshold or one per exit. Memoryless.
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
    register,
)


class MaxProbPolicy(ExitPolicy):
    name = "maxprob"

    def __init__(self, num_exits: int, thresholds: Sequence[float]):
        super().__init__(num_exits)
        if len(thresholds) != num_exits:
            raise PolicyError(f"thresholds needs {num_exits} values, got {len(thresholds)}")
        self.thresholds = [check_number(f"thresholds[{i}]", t, 0.0, 1.0)
                           for i, t in enumerate(thresholds)]

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PolicyState:
        return EmptyState(rows=torch.zeros(batch_size, dtype=torch.bool, device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        self.check_input(k, logits)
        probs = torch.softmax(logits.float(), dim=-1)  # (B, C)
        conf, pred = probs.max(dim=-1)  # (B,), (B,)
        return Decision(conf >= self.thresholds[k - 1], pred, conf, state)

    def params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds}


@register("maxprob")
def _build(num_exits: int, params: Mapping[str, Any],
           calibration: Mapping[str, Any] | None) -> ExitPolicy:
    merged = {**((calibration or {}).get("params", {})), **params}
    unknown = set(params) - {"threshold", "thresholds"}
    if unknown:
        raise PolicyError(f"maxprob: unknown parameter(s) {sorted(unknown)}; use 'threshold'")
    if "threshold" in params or ("thresholds" not in merged and "threshold" in merged):
        t = check_number("threshold", merged["threshold"], 0.0, 1.0)
        return MaxProbPolicy(num_exits, [t] * num_exits)
    return MaxProbPolicy(num_exits, merged.get("thresholds", [0.9] * num_exits))
