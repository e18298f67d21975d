"""Max-softmax confidence (MSDNet's "max score", algorithms.md §C): exit when max_c p_k[c] >= tau_k.

One global threshold or one per exit (`None` never fires); thresholds lie in [0, 1]. Memoryless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from policies.base import (
    ExitPolicy,
    merge_params,
    thresholds_from,
)
from policies.threshold import ConfidenceThresholdPolicy

DEFAULT_THRESHOLD = 0.9


class MaxProbPolicy(ConfidenceThresholdPolicy):
    name = "maxprob"

    def confidence(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf, pred = probs.max(dim=-1)  # (B,), (B,)
        return conf, pred


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merged = merge_params("maxprob", params, calibration, {"threshold", "thresholds"})
    return MaxProbPolicy(num_exits, thresholds_from("maxprob", merged, params, num_exits,
                                                    DEFAULT_THRESHOLD, 0.0, 1.0))
