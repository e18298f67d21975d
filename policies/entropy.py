"""DeeBERT / BranchyNet entropy rule: exit when 1 - H(p_k)/log C >= tau_k.

The normalised-entropy confidence lies in [0, 1] (1 = one-hot). One global threshold or one per
exit (`None` never fires). Memoryless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from policies.base import (
    ExitPolicy,
    merge_params,
    normalised_entropy_confidence,
    thresholds_from,
)
from policies.threshold import ConfidenceThresholdPolicy


class EntropyPolicy(ConfidenceThresholdPolicy):
    name = "entropy"

    def confidence(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalised_entropy_confidence(probs), probs.argmax(dim=-1)  # (B,), (B,)


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merged = merge_params("entropy", params, calibration, {"threshold", "thresholds"})
    return EntropyPolicy(num_exits, thresholds_from("entropy", merged, params, num_exits, 0.9,
                                                    0.0, 1.0))
