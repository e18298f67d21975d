"""The exit-policy contract: pure, vectorised, stateless modules with explicit state objects.

A policy is built once per (model, parameters) and reused for every batch. Per batch:

    state = policy.init_state(batch_size, device)
    for k in 1..K:                              # k is the 1-based exit number
        d = policy.step(state, k, logits_k)     # logits_k: (B, C) of exit k
        d = enforce_last_exit(d, k, K)          # the engine's rule: exit K always fires
        state = d.state.filter(~d.exit_mask)    # exited rows leave (engine side)

Policies do no I/O, no logging, no metrics and never see the model. Their decisions for a row
depend only on that row's logits history, so a batch gives the same answers as one row at a time.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

import torch

from policies.errors import PolicyError

S = TypeVar("S", bound="PolicyState")


@dataclass(frozen=True)
class PolicyState:
    """Per-row policy memory. Every tensor field has the batch as its first dimension."""

    def filter(self: S, keep: torch.Tensor) -> S:
        """Keep the rows where `keep` (bool, (B,)) is True."""
        return replace(self, **{f.name: getattr(self, f.name)[keep] for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    @classmethod
    def concatenate(cls: type[S], states: list[S]) -> S:
        """Merge states of several batches (rows in order)."""
        first = states[0]
        return replace(first, **{f.name: torch.cat([getattr(s, f.name) for s in states])
                                 for f in fields(first)
                                 if isinstance(getattr(first, f.name), torch.Tensor)})


@dataclass(frozen=True)
class EmptyState(PolicyState):
    """State of memoryless policies (max-prob, entropy, static, none)."""

    rows: torch.Tensor  # (B,) placeholder so filter/concatenate keep the batch size


@dataclass(frozen=True)
class Decision:
    """One step's verdict for every row of the batch."""

    exit_mask: torch.Tensor  # (B,) bool: row may leave at this exit
    prediction: torch.Tensor  # (B,) long: the class the row would get if it leaves now
    score: torch.Tensor  # (B,) float: the policy's own score at this exit (for traces)
    state: PolicyState  # state after this exit (all rows, exited or not)


class ExitPolicy(ABC):
    """Base class: subclasses define `name`, `init_state`, `step` and `params`."""

    name: ClassVar[str]
    online: ClassVar[bool] = True  # False for oracles that need labels (offline only)

    def __init__(self, num_exits: int):
        if num_exits < 1:
            raise PolicyError(f"num_exits must be >= 1, got {num_exits}")
        self.num_exits = num_exits

    @abstractmethod
    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PolicyState:
        """Fresh state for `batch_size` rows that have not reached any exit yet."""

    @abstractmethod
    def step(self, state: PolicyState, k: int, logits: torch.Tensor) -> Decision:
        """Decide after exit `k` (1-based).

        Args:
            state: state returned by the previous step (or `init_state`), rows aligned with logits.
            k: exit number, 1..num_exits.
            logits: (B, C) logits of exit k.

        Returns:
            Decision with the exit mask, prediction, score and the new state.
        """

    def first_exit(self) -> int:
        """The first exit at which this policy can let a row leave. The engine skips the exit
        heads before it (unless a latency budget or a trace needs them)."""
        return 1

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters in JSON-able form (shown in /v1/models, stored in manifests)."""

    def check_input(self, k: int, logits: torch.Tensor, batch_size: int | None = None) -> None:
        """Raise PolicyError on a bad exit number, shape or non-finite logits."""
        if not 1 <= k <= self.num_exits:
            raise PolicyError(f"exit k={k} out of range 1..{self.num_exits}")
        if logits.dim() != 2 or logits.shape[1] < 1:
            raise PolicyError(f"logits must be (B, C) with C >= 1, got shape "
                              f"{tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise PolicyError(f"logits must be floating point, got {logits.dtype}")
        if batch_size is not None and logits.shape[0] != batch_size:
            raise PolicyError(f"logits have {logits.shape[0]} rows, state has {batch_size}")
        if not bool(torch.isfinite(logits).all()):
            raise PolicyError("logits contain NaN or inf")


class MemorylessPolicy(ExitPolicy):
    """A policy whose decision at exit k depends on exit k alone: its state is `EmptyState`."""

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> PolicyState:
        return EmptyState(rows=torch.zeros(batch_size, dtype=torch.bool, device=device))


def enforce_last_exit(decision: Decision, k: int, num_exits: int) -> Decision:
    """The engine's rule: at the last exit every remaining row leaves."""
    if k >= num_exits:
        return replace(decision, exit_mask=torch.ones_like(decision.exit_mask))
    return decision


@dataclass(frozen=True)
class Verdict:
    """Who leaves at exit k, and why: the one per-layer decision of every loop."""

    decision: Decision  # the policy's decision with the last-exit rule applied
    exit_mask: torch.Tensor  # (B,) bool: rows that leave now
    forced: torch.Tensor  # (B,) bool: rows that leave only because their latency budget ran out


def decide(policy: ExitPolicy, state: PolicyState, k: int, logits: torch.Tensor, num_exits: int,
           over_budget: torch.Tensor | None = None) -> Verdict:
    """The per-layer decision shared by the text loop, the caption loop and the offline replay:
    the policy steps, the last exit always fires, and a row whose budget cannot pay for one
    more layer (`over_budget`, (B,) bool) is forced out here."""
    d = enforce_last_exit(policy.step(state, k, logits), k, num_exits)
    if over_budget is None:
        return Verdict(d, d.exit_mask, torch.zeros_like(d.exit_mask))
    forced = over_budget.to(d.exit_mask.device) & ~d.exit_mask  # (B,)
    return Verdict(d, d.exit_mask | forced, forced)


# ---- parameter checking helpers ------------------------------------------------------------
def check_number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite number within [lo, hi], else PolicyError naming the parameter and the limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise PolicyError(f"{name} must be finite, got {value!r}")
    if not lo <= v <= hi:
        raise PolicyError(f"{name}={value!r} out of range [{lo}, {hi}]")
    return v


# ---- registry ----------------------------------------------------------------------------------
PolicyFactory = Callable[[int, Mapping[str, Any], Mapping[str, Any] | None], ExitPolicy]
"""(num_exits, request params, manifest calibration) -> policy; see policies.registry."""


# ---- shared helpers for the built-in policies (additive) ----------------------------------------
def merge_params(policy: str, params: Mapping[str, Any], calibration: Mapping[str, Any] | None,
                 allowed: set[str]) -> dict[str, Any]:
    """Calibrated parameters overridden by request parameters; unknown request keys are errors.

    Keys in the calibration that a newer policy no longer knows are dropped silently (the
    manifest may have been written by another version); the request must be exact.
    """
    unknown = set(params) - allowed
    if unknown:
        raise PolicyError(f"{policy}: unknown parameter(s) {sorted(unknown)}; "
                          f"known: {sorted(allowed)}")
    fitted = (calibration or {}).get("params", {}) or {}
    if not isinstance(fitted, Mapping):
        raise PolicyError(f"{policy}: calibration params must be a mapping")
    return {**{k: v for k, v in fitted.items() if k in allowed}, **params}


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """One of `choices`, else PolicyError naming the parameter and the allowed values."""
    if not isinstance(value, str) or value not in choices:
        raise PolicyError(f"{name}={value!r} unknown; choose one of {list(choices)}")
    return value


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer (or integral float) within [lo, hi], else PolicyError."""
    v = check_number(name, value, lo, hi)
    if v != int(v):
        raise PolicyError(f"{name} must be an integer, got {value!r}")
    return int(v)


def check_thresholds(name: str, values: Any, num_exits: int, lo: float = -math.inf,
                     hi: float = math.inf) -> list[float | None]:
    """A list of `num_exits` thresholds; `None` (JSON null) means "never exit here"."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise PolicyError(f"{name} must be a list of {num_exits} numbers, got {values!r}")
    if len(values) != num_exits:
        raise PolicyError(f"{name} needs {num_exits} values (one per exit), got {len(values)}")
    return [None if v is None else check_number(f"{name}[{i}]", v, lo, hi)
            for i, v in enumerate(values)]


def thresholds_from(policy: str, merged: Mapping[str, Any], request: Mapping[str, Any],
                    num_exits: int, default: float, lo: float = -math.inf,
                    hi: float = math.inf) -> list[float | None]:
    """Per-exit thresholds from `threshold` (one global value) or `thresholds` (a list).

    A request's `threshold` beats a calibrated `thresholds` list; otherwise the merged list wins,
    then a merged global value, then `default`.
    """
    if "threshold" in request or ("thresholds" not in merged and "threshold" in merged):
        t = check_number(f"{policy}: threshold", merged["threshold"], lo, hi)
        return [t] * num_exits
    if "thresholds" in merged:
        return check_thresholds(f"{policy}: thresholds", merged["thresholds"], num_exits, lo, hi)
    return [default] * num_exits


def threshold_value(t: float | None) -> float:
    """A stored threshold as a float: None (never exit) becomes +inf."""
    return math.inf if t is None else float(t)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise softmax in float64 (row results do not depend on the batch they are in)."""
    return torch.softmax(logits.double(), dim=-1)  # (B, C)


def normalised_entropy_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - H(p)/log C in [0, 1] for (B, C) probabilities; 1 for C == 1."""
    c = probs.shape[-1]
    if c < 2:
        return torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-300).log(),
                        torch.zeros_like(probs))  # (B, C)
    return (1.0 + plogp.sum(dim=-1) / math.log(c)).clamp(0.0, 1.0)  # (B,)
