"""Shared shape of the memoryless confidence-threshold rules (max-prob, entropy).

A subclass defines `confidence(probs) -> (conf, pred)`; the rule is `exit at k when conf >=
tau_k`, with one threshold per exit in [0, 1] and `None` for "never exit here".
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from policies.base import (
    Decision,
    EmptyState,
    MemorylessPolicy,
    PolicyError,
    PolicyState,
    check_number,
    probabilities,
    threshold_value,
)


class ConfidenceThresholdPolicy(MemorylessPolicy):
    def __init__(self, num_exits: int, thresholds: Sequence[float | None]):
        super().__init__(num_exits)
        if len(thresholds) != num_exits:
            raise PolicyError(f"{self.name}: thresholds needs {num_exits} values, "
                              f"got {len(thresholds)}")
        self.thresholds = [None if t is None else
                           check_number(f"{self.name}: thresholds[{i}]", t, 0.0, 1.0)
                           for i, t in enumerate(thresholds)]

    @abstractmethod
    def confidence(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conf, pred), each (B,), from (B, C) probabilities."""

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EmptyState)
        self.check_input(k, logits, state.rows.shape[0])
        conf, pred = self.confidence(probabilities(logits))  # (B,), (B,)
        return Decision(conf >= threshold_value(self.thresholds[k - 1]), pred, conf, state)

    def params(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds}
