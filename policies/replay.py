"""Replay a policy over cached exit logits (N, K, C), exactly as the engine runs it.

The loop is the engine's: `decide` on the rows still in flight (policy + last-exit rule, the
same function the engine loops use), record the rows that leave, filter the state. Results
carry accuracy and speed-up helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policies.base import ExitPolicy, PolicyError, decide, probabilities
from policies.costs import ExitCosts, layer_costs


@dataclass(frozen=True)
class ReplayResult:
    """Where every sample left and what it predicted."""

    exit_layer: torch.Tensor  # (N,) long, 1-based exit index
    prediction: torch.Tensor  # (N,) long
    final_prediction: torch.Tensor  # (N,) long: the last exit's argmax (reference)
    labels: torch.Tensor | None  # (N,) long gold labels, if known
    costs: ExitCosts

    @property
    def num_exits(self) -> int:
        return self.costs.num_exits

    def _labels(self) -> torch.Tensor:
        if self.labels is None:
            raise PolicyError("accuracy needs labels")
        return self.labels

    def accuracy(self) -> float:
        return float((self.prediction == self._labels()).double().mean())

    def last_accuracy(self) -> float:
        return float((self.final_prediction == self._labels()).double().mean())

    def accuracy_loss(self) -> float:
        """Last-exit accuracy minus this policy's accuracy (fraction; > 0 means worse)."""
        return self.last_accuracy() - self.accuracy()

    def agreement(self) -> float:
        """Share of samples whose prediction equals the last exit's."""
        return float((self.prediction == self.final_prediction).double().mean())

    def mean_exit(self) -> float:
        return float(self.exit_layer.double().mean())

    def layer_speedup(self) -> float:
        """K / mean exit layer (BEEM's expected-layer speed-up)."""
        return self.num_exits / self.mean_exit()

    def mean_cost(self) -> float:
        table = torch.tensor(self.costs.cumulative, dtype=torch.float64)  # (K,)
        return float(table[self.exit_layer - 1].mean())

    def cost_speedup(self) -> float:
        """Cost of the last exit / mean cost (with measured latency: wall-clock estimate)."""
        return self.costs.full / self.mean_cost()

    def exit_shares(self) -> list[float]:
        counts = torch.bincount(self.exit_layer - 1, minlength=self.num_exits)  # (K,)
        return [float(c) / len(self.exit_layer) for c in counts]


def _check_logits(logits: torch.Tensor, labels: torch.Tensor | None) -> None:
    if logits.dim() != 3 or logits.shape[1] < 1 or logits.shape[2] < 1:
        raise PolicyError(f"cached logits must be (N, K, C), got shape {tuple(logits.shape)}")
    if labels is not None and labels.shape != logits.shape[:1]:
        raise PolicyError(f"labels shape {tuple(labels.shape)} != ({logits.shape[0]},)")


def from_exits(exits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None = None,
               costs: ExitCosts | None = None) -> ReplayResult:
    """A result from given exit indices (offline oracles)."""
    _check_logits(logits, labels)
    k = logits.shape[1]
    preds = probabilities(logits).argmax(dim=-1)  # (N, K)
    pred = preds.gather(1, (exits - 1).unsqueeze(1)).squeeze(1)  # (N,)
    return ReplayResult(exits.long(), pred, preds[:, -1], labels, costs or layer_costs(k))


def replay(policy: ExitPolicy, logits: torch.Tensor, labels: torch.Tensor | None = None,
           costs: ExitCosts | None = None, batch_size: int | None = None) -> ReplayResult:
    """Run `policy` over cached logits in batches of `batch_size` rows (default: all at once)."""
    _check_logits(logits, labels)
    n, k_max, _ = logits.shape
    if k_max != policy.num_exits:
        raise PolicyError(f"policy built for {policy.num_exits} exits, logits have {k_max}")
    if not policy.online:
        raise PolicyError(f"{policy.name} is offline only; use its own exits() function")
    costs = costs or layer_costs(k_max)
    if costs.num_exits != k_max:
        raise PolicyError(f"costs for {costs.num_exits} exits, logits have {k_max}")
    exits = torch.zeros(n, dtype=torch.long)
    preds = torch.zeros(n, dtype=torch.long)
    step = batch_size or max(n, 1)
    for start in range(0, n, step):
        rows = torch.arange(start, min(start + step, n))  # (b,) global row ids in flight
        state = policy.init_state(len(rows))
        for k in range(1, k_max + 1):
            v = decide(policy, state, k, logits[rows, k - 1], k_max)
            d, gone = v.decision, v.exit_mask  # (b,)
            exits[rows[gone]] = k
            preds[rows[gone]] = d.prediction[gone]
            state, rows = d.state.filter(~gone), rows[~gone]
            if len(rows) == 0:
                break
    final = probabilities(logits[:, -1]).argmax(dim=-1)  # (N,)
    return ReplayResult(exits, preds, final, labels, costs)


@dataclass(frozen=True)
class Trace:
    """A policy's view of every exit of every row, without anyone leaving (for fitting)."""

    scores: torch.Tensor  # (N, K) float64: the policy's score at each exit
    fires: torch.Tensor  # (N, K) bool: whether the rule would fire there
    predictions: torch.Tensor  # (N, K) long


def trace(policy: ExitPolicy, logits: torch.Tensor) -> Trace:
    """Step through all exits with every row in flight (valid because rows are independent)."""
    _check_logits(logits, None)
    n, k_max, _ = logits.shape
    state = policy.init_state(n)
    scores, fires, preds = [], [], []
    for k in range(1, k_max + 1):
        d = policy.step(state, k, logits[:, k - 1])
        scores.append(d.score.double())
        fires.append(d.exit_mask)
        preds.append(d.prediction)
        state = d.state
    return Trace(torch.stack(scores, 1), torch.stack(fires, 1), torch.stack(preds, 1))


def first_firing(fires: torch.Tensor) -> torch.Tensor:
    """1-based index of the first True per row of (N, K) `fires`, K when none (forced exit)."""
    n, k = fires.shape
    forced = fires.clone()
    forced[:, -1] = True
    return forced.double().argmax(dim=1) + 1  # (N,) first max of 0/1 is the first True
