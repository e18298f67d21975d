"""BEEM (Bajpai & Hanawal, ICLR 2025): exits as an ensemble of agreeing experts.

Paper-level rule (algorithms.md §A.2), per row, with C_k = max softmax probability of exit k:

    if k > 1 and argmax_k == argmax_{k-1}:  S_k = S_{k-1} + w_k * C_k    # streak goes on
    else:                                   S_k = reset value              # streak restarts
    exit at k when S_k >= alpha_k

The reset value is `w_k * C_k` (`reset="weighted"`, the paper) or `0` (`reset="zero"`, the released
code). Weights (§A.3): BEEM-C `w_k = cumcost_k / cumcost_K` (k/K for layer counts, or measured
cumulative latency) and BEEM-A `w_k = validation accuracy of exit k`, rescaled to sum (K+1)/2;
see `cost_weights` / `accuracy_weights`. Thresholds are one global alpha or one per exit; a `None`
(JSON null) per-exit threshold never fires. State: (prev_pred, S).

Parameters come from the calibration (`policies.fit.beem_fit`): `params` holds the served weighting,
weights and thresholds, `variants[weighting]` the fit of each scheme, so a request
`{"weighting": "accuracy"}` gets BEEM-A's own thresholds rather than BEEM-C's.
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
    check_choice,
    check_number,
    merge_params,
    probabilities,
    threshold_value,
    thresholds_from,
)

WEIGHTINGS = ("cost", "accuracy", "custom")
RESETS = ("weighted", "zero")
DEFAULT_ALPHA = 1.0


@dataclass(frozen=True)
class BeemState(PolicyState):
    prev_pred: torch.Tensor  # (B,) long: argmax of the previous exit, -1 before exit 1
    score: torch.Tensor  # (B,) float64: S of the current agreeing streak


def cost_weights(cumulative_costs: Sequence[float], power: float = 1.0) -> list[float]:
    """BEEM-C: w_k proportional to the cost of reaching exit k, scaled so that w_K = 1.

    `power` > 1 sharpens the weighting to (cumcost_k / cumcost_K)**power: the streak's earlier,
    weaker exits count less against the current one (1 is the paper's; as it grows, the
    normalised score S_k / W_k tends to the current exit's confidence, i.e. max-prob)."""
    last = float(cumulative_costs[-1])
    if last <= 0:
        raise PolicyError(f"beem: cumulative cost of the last exit must be > 0, got {last}")
    check_number("beem: power", power, 0.0, 64.0)
    return [(float(c) / last) ** power for c in cumulative_costs]


def accuracy_weights(accuracies: Sequence[float], normalise: bool = True) -> list[float]:
    """BEEM-A: w_k = validation accuracy of exit k; with `normalise`, rescaled so that
    sum(w) equals the BEEM-C layer-count sum (K+1)/2, keeping threshold scales comparable."""
    acc = [check_number(f"beem: accuracies[{i}]", a, 0.0, 1.0) for i, a in enumerate(accuracies)]
    if not normalise:
        return acc
    total = sum(acc)
    if total <= 0:
        raise PolicyError("beem: accuracy weights sum to 0")
    k = len(acc)
    return [a * (k + 1) / 2 / total for a in acc]


class BeemPolicy(ExitPolicy):
    name = "beem"

    def __init__(self, num_exits: int, weights: Sequence[float],
                 thresholds: Sequence[float | None], reset: str = "weighted",
                 weighting: str = "custom"):
        super().__init__(num_exits)
        if len(weights) != num_exits:
            raise PolicyError(f"beem: weights needs {num_exits} values, got {len(weights)}")
        if len(thresholds) != num_exits:
            raise PolicyError(f"beem: thresholds needs {num_exits} values, got {len(thresholds)}")
        self.weights = [check_number(f"beem: weights[{i}]", w, 0.0, 1e6)
                        for i, w in enumerate(weights)]
        self.thresholds = [None if t is None else
                           check_number(f"beem: thresholds[{i}]", t, 0.0, 1e6)
                           for i, t in enumerate(thresholds)]
        self.reset = check_choice("beem: reset", reset, RESETS)
        self.weighting = check_choice("beem: weighting", weighting, WEIGHTINGS)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> BeemState:
        return BeemState(prev_pred=torch.full((batch_size,), -1, dtype=torch.long, device=device),
                         score=torch.zeros(batch_size, dtype=torch.float64, device=device))

    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        assert isinstance(state, BeemState)
        self.check_input(k, logits, state.score.shape[0])
        conf, pred = probabilities(logits).max(dim=-1)  # (B,), (B,)
        gain = self.weights[k - 1] * conf  # (B,)
        agree = pred == state.prev_pred  # (B,) never true at k == 1 (prev_pred = -1)
        restart = gain if self.reset == "weighted" else torch.zeros_like(gain)
        score = torch.where(agree, state.score + gain, restart)  # (B,)
        exit_mask = score >= threshold_value(self.thresholds[k - 1])  # (B,)
        return Decision(exit_mask, pred, score, BeemState(prev_pred=pred, score=score))

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "weights": self.weights, "reset": self.reset,
                "thresholds": self.thresholds}


ALLOWED = {"weighting", "weights", "reset", "threshold", "thresholds"}


def _weight_list(value: Any, num_exits: int) -> list[float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise PolicyError(f"beem: weights must be a list of {num_exits} numbers, got {value!r}")
    return list(value)


def _variant(calibration: Mapping[str, Any] | None, weighting: str) -> Mapping[str, Any]:
    """Calibrated weights and thresholds of one weighting scheme (`calibration["variants"]`)."""
    variants = (calibration or {}).get("variants") or {}
    found = variants.get(weighting) if isinstance(variants, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def _resolve(params: Mapping[str, Any], merged: Mapping[str, Any],
             calibration: Mapping[str, Any] | None,
             num_exits: int) -> tuple[str, list[float], Mapping[str, Any]]:
    """Weighting, weights and the parameter set thresholds are read from.

    An explicit `weights` list makes the weighting `custom`. A requested `weighting` takes that
    scheme's calibrated weights and thresholds (`variants`), or BEEM-C layer weights k/K when the
    scheme was never calibrated. Otherwise the calibrated parameters apply as they are.
    """
    if "weights" in params:
        return "custom", _weight_list(params["weights"], num_exits), merged
    if "weighting" in params:
        weighting = check_choice("beem: weighting", params["weighting"], WEIGHTINGS[:2])
        var = _variant(calibration, weighting)
        source = {k: v for k, v in {**var, **params}.items() if k in ("threshold", "thresholds")}
        if "weights" in var:
            return weighting, _weight_list(var["weights"], num_exits), source
        if weighting == "cost":
            return "cost", cost_weights(range(1, num_exits + 1)), source
        raise PolicyError("beem: weighting='accuracy' needs calibrated weights (run `eeserve "
                          "calibrate DIR`) or an explicit 'weights' list")
    weighting = check_choice("beem: weighting", merged.get("weighting", "cost"), WEIGHTINGS)
    if "weights" in merged:
        return weighting, _weight_list(merged["weights"], num_exits), merged
    if weighting != "cost":
        raise PolicyError(f"beem: weighting={weighting!r} without a 'weights' list")
    return "cost", cost_weights(range(1, num_exits + 1)), merged


def build(num_exits: int, params: Mapping[str, Any],
          calibration: Mapping[str, Any] | None) -> ExitPolicy:
    """The policy from request `params` over the manifest `calibration` (registry factory)."""
    merged = merge_params("beem", params, calibration, ALLOWED)
    weighting, weights, source = _resolve(params, merged, calibration, num_exits)
    thresholds = thresholds_from("beem", source, params, num_exits, DEFAULT_ALPHA, 0.0, 1e6)
    return BeemPolicy(num_exits, weights, thresholds, merged.get("reset", "weighted"), weighting)
