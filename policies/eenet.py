"""EENet (Ilhan et al., WACV 2024): learned per-exit scores with budgeted thresholds.

At exit k (algorithms.md §B.2-B.6), with p_k the softmax, m_k = max p_k, e_k = 1 - H(p_k)/log C:

    q_k = a_k . p_k + b_k . [m_k, e_k, q_1, ..., q_{k-1}]        (raw linear score)
    exit at k when q_k >= T_k; the last exit always fires (fixes the repo's un-exited rows)

The heads a_k (C values) and b_k (k+1 values) and the thresholds are fitted offline on cached
validation logits by `policies.fit.eenet_fit.fit_eenet` so that the average cost meets a budget;
they are stored as plain lists in the manifest. State: the scores q_1..q_K so far ((B, K),
0 = not yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from policies.base import (
    Decision,
    ExitPolicy,
    PolicyError,
    PolicyState,
    check_number,
    check_thresholds,
    merge_params,
    normalised_entropy_confidence,
    probabilities,
    threshold_value,
)


@dataclass(frozen=True)
class EENetState(PolicyState):
    scores: torch.Tensor  # (B, K) float64: q_j for exits already passed, 0 for the rest


def eenet_features(probs: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """Scalar features [m_k, e_k, q_1..q_{k-1}] of one exit: (B, C), (B, k-1) -> (B, k+1)."""
    m = probs.max(dim=-1).values  # (B,)
    e = normalised_entropy_confidence(probs)  # (B,)
    return torch.cat([m.unsqueeze(1), e.unsqueeze(1), earlier.to(probs.dtype)], dim=1)


def _matrix(name: str, rows: Any, lengths: Sequence[int]) -> list[list[float]]:
    if isinstance(rows, str) or not isinstance(rows, Sequence) or len(rows) != len(lengths):
        raise PolicyError(f"eenet: {name} needs {len(lengths)} lists (one per exit)")
    out = []
    for k, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != n:
            got = len(row) if isinstance(row, Sequence) else row
            raise PolicyError(f"eenet: {name}[{k}] needs {n} values, got {got!r}")
        out.append([check_number(f"eenet: {name}[{k}][{i}]", v, -1e6, 1e6)
                    for i, v in enumerate(row)])
    return out


class EENetPolicy(ExitPolicy):
    name = "eenet"

    def __init__(self, num_exits: int, a: Sequence[Sequence[float]],
                 b: Sequence[Sequence[float]], thresholds: Sequence[float | None],
                 budget: float | None = None):
        super().__init__(num_exits)
        if isinstance(a, str) or not isinstance(a, Sequence) or not a or \
                not isinstance(a[0], Sequence) or len(a[0]) < 1:
            raise PolicyError("eenet: a must be a list of per-exit class weight lists")
        self.num_classes = len(a[0])
        self.a = _matrix("a", a, [self.num_classes] * num_exits)
        self.b = _matrix("b", b, [k + 1 for k in range(1, num_exits + 1)])
        self.thresholds = check_thresholds("eenet: thresholds", thresholds, num_exits)
        self.budget = None if budget is None else check_number("eenet: budget", budget, 0.0, 1.0)
        self._a = [torch.tensor(r, dtype=torch.float64) for r in self.a]
        self._b = [torch.tensor(r, dtype=torch.float64) for r in self.b]

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> EENetState:
        return EENetState(torch.zeros(batch_size, self.num_exits, dtype=torch.float64,
                                      device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, EENetState)
        self.check_input(k, logits, state.scores.shape[0])
        if logits.shape[1] != self.num_classes:
            raise PolicyError(f"eenet: fitted for {self.num_classes} classes, logits have "
                              f"{logits.shape[1]}")
        probs = probabilities(logits)  # (B, C)
        feats = eenet_features(probs, state.scores[:, : k - 1])  # (B, k+1)
        a, b = self._a[k - 1].to(probs.device), self._b[k - 1].to(probs.device)
        q = (probs * a).sum(dim=-1) + (feats * b).sum(dim=-1)  # (B,)
        scores = state.scores.clone()  # (B, K)
        scores[:, k - 1] = q
        if k == self.num_exits:
            fire = torch.ones_like(q, dtype=torch.bool)  # (B,) last exit always fires
        else:
            fire = q >= threshold_value(self.thresholds[k - 1])  # (B,)
        return Decision(fire, probs.argmax(dim=-1), q, EENetState(scores))

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "thresholds": self.thresholds, "budget": self.budget}


ALLOWED = {"a", "b", "thresholds", "budget", "offset"}


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    """Needs fitted heads (calibration or explicit a, b, thresholds); `offset` shifts every
    threshold of exits 1..K-1 (positive = exit later, more cost)."""
    merged = merge_params("eenet", params, calibration, ALLOWED)
    missing = [key for key in ("a", "b", "thresholds") if key not in merged]
    if missing:
        raise PolicyError(f"eenet: no fitted {missing}; run `eeserve calibrate DIR --policy "
                          "eenet` or pass a, b and thresholds")
    thresholds = check_thresholds("eenet: thresholds", merged["thresholds"], num_exits)
    if "offset" in merged:
        off = check_number("eenet: offset", merged["offset"], -1e6, 1e6)
        thresholds = [None if t is None else t + off for t in thresholds]
    return EENetPolicy(num_exits, merged["a"], merged["b"], thresholds, merged.get("budget"))
