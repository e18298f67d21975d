"""Offline-only oracles (diagnostics; they need labels or every exit's logits).

* `oracle-label`: exit at the first exit whose argmax is the gold label; the last exit if none.
* `oracle-consistency`: exit at the first exit from which every deeper exit predicts the same
  class as the last exit (keeps last-exit accuracy exactly; bounds "no-loss" speed-ups).

They are not in the online REGISTRY (`build_policy` cannot make them); evaluation uses `ORACLES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from policies.base import PolicyError, probabilities
from policies.costs import ExitCosts
from policies.replay import ReplayResult, _check_logits, first_firing, from_exits


@dataclass(frozen=True)
class Oracle:
    name: str
    online = False
    needs_labels: bool
    exits: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (N,K,C), (N,) -> (N,)

    def replay(self, logits: torch.Tensor, labels: torch.Tensor | None,
               costs: ExitCosts | None = None) -> ReplayResult:
        _check_logits(logits, labels)
        return from_exits(self.exits(logits, labels), logits, labels, costs)


def label_oracle_exits(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise PolicyError("oracle-label needs labels")
    preds = probabilities(logits).argmax(dim=-1)  # (N, K)
    return first_firing(preds == labels.unsqueeze(1))  # (N,)


def consistency_oracle_exits(logits: torch.Tensor,
                             labels: torch.Tensor | None = None) -> torch.Tensor:
    preds = probabilities(logits).argmax(dim=-1)  # (N, K)
    same = preds == preds[:, -1:]  # (N, K)
    # suffix-and: stable[:, k] is True when exits k..K all agree with the last one
    stable = same.flip(1).cumprod(dim=1).flip(1).bool()  # (N, K)
    return first_firing(stable)  # (N,)


ORACLES = {
    "oracle-label": Oracle("oracle-label", True, label_oracle_exits),
    "oracle-consistency": Oracle("oracle-consistency", False, consistency_oracle_exits),
}
