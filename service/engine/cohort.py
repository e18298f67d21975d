"""A cohort: rows of one model and one policy at the same layer, stepped together.

    run:    out = model.step(cohort.batch, k)                # one layer + exit head k
    update: v = decide(policy, state, k, out.logits, K, over_budget)   # policies/base.py:
            exits = policy | last exit | latency budget          # the one per-layer rule
            resolve exited rows at once; keep the rest (batch, state and rows filtered)

Cohorts of the same model at the same layer are stepped as one merged batch (`run_group`), so
rows under different policies still share the matrix multiplies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from models.base import MergeableBatch, StepModel
from policies import ExitPolicy, PolicyState
from policies.base import decide
from service.engine.handles import RequestHandle
from service.protocol import ClassifyResult, DeadlineExceeded, ExitTrace


@dataclass
class Row:
    """One text in flight."""

    handle: RequestHandle
    index: int  # position of the text in its request
    admitted: float  # perf_counter() when it left the queue
    budget_end: float | None  # perf_counter() by which it must be answered (latency budget)
    trace: list[ExitTrace] | None


@dataclass
class Cohort:
    """A batch object (TGI's `Batch`): rows of one model and one policy at one layer, with the
    backend's batch and the policy's state row-aligned. Built only by its own factories:
    `start` (new rows at layer 0), `filter`, `concatenate`, `split` and `stepped`."""

    model: str
    policy_name: str
    policy: ExitPolicy
    batch: MergeableBatch  # the backend's rows at `batch.layer` (hidden states (B, T, H))
    state: PolicyState  # (B,) policy memory
    rows: list[Row]
    skipped: int = 0  # rounds this cohort waited for younger cohorts to catch up

    @classmethod
    def start(cls, model: str, policy_name: str, policy: ExitPolicy, batch: MergeableBatch,
              rows: list[Row], device: str | torch.device) -> Cohort:
        """Admitted rows at layer 0 (`batch` from the model's `embed`), fresh policy state."""
        return cls(model, policy_name, policy, batch, policy.init_state(len(rows), device), rows)

    @classmethod
    def concatenate(cls, cohorts: Sequence[Cohort]) -> Cohort:
        """Cohorts of one model and policy at one layer as one (rows in order)."""
        if len(cohorts) == 1:
            return cohorts[0]
        first = cohorts[0]
        return cls(first.model, first.policy_name, first.policy,
                   concatenate([c.batch for c in cohorts]),
                   type(first.state).concatenate([c.state for c in cohorts]),
                   [r for c in cohorts for r in c.rows])

    def stepped(self, batch: MergeableBatch, state: PolicyState | None = None) -> Cohort:
        """The same rows after a step: the advanced batch (and the policy's new state)."""
        return Cohort(self.model, self.policy_name, self.policy, batch,
                      self.state if state is None else state, self.rows)

    def filter(self, keep: Sequence[bool]) -> Cohort | None:
        """The rows where `keep` is true (None when none are): batch, state and rows together."""
        if all(keep):
            return self
        if not any(keep):
            return None
        mask = torch.tensor(list(keep), dtype=torch.bool)  # (B,) the batch moves it if needed
        return Cohort(self.model, self.policy_name, self.policy, self.batch.filter(mask),
                      self.state.filter(mask),
                      [r for r, k in zip(self.rows, keep, strict=True) if k], self.skipped)

    def split(self, cap: int) -> list[Cohort]:
        """This cohort cut into pieces of at most `cap` rows (same layer, same policy)."""
        if len(self) <= cap:
            return [self]
        out = []
        for start in range(0, len(self), cap):
            piece = self.filter([start <= i < start + cap for i in range(len(self))])
            assert piece is not None
            out.append(piece)
        return out

    @property
    def layer(self) -> int:
        return self.batch.layer

    def needs_head(self, num_exits: int) -> bool:
        """Whether the next exit's head must run: the policy may fire there, or it is the last
        exit, or a row has a latency budget (it may be forced out anywhere) or wants a trace."""
        k = self.layer + 1
        return k >= min(self.policy.first_exit(), num_exits) or any(
            r.trace is not None or r.budget_end is not None for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Exited:
    """A row that left at this step, with what its result needs."""

    row: Row
    layer: int
    prediction: int  # the policy's class for this row
    budget_forced: bool


@dataclass(frozen=True)
class UpdateOutcome:
    cohort: Cohort | None  # the surviving rows (None when all left)
    exited: list[Exited]
    dropped: int  # rows removed because their request failed, expired or was cancelled


def advance_group(model: StepModel, cohorts: list[Cohort]) -> list[MergeableBatch]:
    """Step cohorts through the next layer without exit heads (no exit is possible there)."""
    k = cohorts[0].layer + 1
    if len(cohorts) == 1:
        return [model.advance(cohorts[0].batch, k)]
    merged = concatenate([c.batch for c in cohorts])  # (sum B_i, T_max, H)
    return _split_rows(model.advance(merged, k), [len(c) for c in cohorts])


def concatenate(batches: Sequence[MergeableBatch]) -> MergeableBatch:
    """Merge same-layer batches of one backend (the batch class knows how)."""
    return type(batches[0]).concatenate(batches)


def _split_rows(batch: MergeableBatch, sizes: list[int]) -> list[MergeableBatch]:
    out, start = [], 0
    for n in sizes:
        keep = torch.zeros(len(batch), dtype=torch.bool)  # (B,) the batch moves it if needed
        keep[start:start + n] = True
        out.append(batch.filter(keep))
        start += n
    return out


def run_group(model: StepModel,
              cohorts: list[Cohort]) -> list[tuple[torch.Tensor, MergeableBatch]]:
    """Step every cohort (same model, same layer) through the next layer as one batch.

    Returns per cohort the exit logits (B_i, C) and the advanced batch, rows in order.
    """
    k = cohorts[0].layer + 1
    if len(cohorts) == 1:
        out = model.step(cohorts[0].batch, k)
        return [(out.logits, cast(MergeableBatch, out.batch))]  # text batches merge
    merged = concatenate([c.batch for c in cohorts])  # (sum B_i, T_max, H)
    out = model.step(merged, k)
    sizes = [len(c) for c in cohorts]
    batches = _split_rows(cast(MergeableBatch, out.batch), sizes)
    logits = torch.split(out.logits, sizes)  # B_i x (B_i, C)
    return list(zip(logits, batches, strict=True))


def update(cohort: Cohort, logits: torch.Tensor, batch: MergeableBatch, num_exits: int, now: float,
           next_step_s: float) -> UpdateOutcome:
    """Apply the policy and the engine's rules to one stepped cohort."""
    k = batch.layer
    over = None
    if any(r.budget_end is not None for r in cohort.rows):
        over = torch.tensor([r.budget_end is not None and now + next_step_s > r.budget_end
                             for r in cohort.rows])  # (B,) one more layer would not fit
    v = decide(cohort.policy, cohort.state, k, logits, num_exits, over)
    d = v.decision
    verdict = torch.stack([v.exit_mask.long(), d.prediction.long(), v.forced.long()]).tolist()
    leaving, prediction, forced_rows = verdict  # one copy to the host per step
    if any(r.trace is not None for r in cohort.rows):
        _append_traces(cohort.rows, k, logits, d.prediction, d.score)
    keep: list[bool] = []
    exited: list[Exited] = []
    dropped = 0
    for row, leaves, pred, forced in zip(cohort.rows, leaving, prediction, forced_rows,
                                         strict=True):
        if row.handle.done or row.handle.expired(now):
            if not row.handle.done:
                row.handle.fail(DeadlineExceeded(
                    f"request {row.handle.request_id} passed its deadline after exit {k}",
                    "deadline_ms"))
            keep.append(False)
            dropped += 1
            continue
        if leaves:
            exited.append(Exited(row, k, int(pred), bool(forced)))
        keep.append(not leaves)
    survivors = cohort.stepped(batch, d.state).filter(keep)  # no copies when all stay
    return UpdateOutcome(survivors, exited, dropped)


def _append_traces(rows: list[Row], k: int, logits: torch.Tensor, pred: torch.Tensor,
                   score: torch.Tensor) -> None:
    conf = torch.softmax(logits.float(), dim=-1).max(dim=-1).values.tolist()  # (B,)
    preds, scores = pred.tolist(), score.double().tolist()
    for i, row in enumerate(rows):
        if row.trace is not None:
            row.trace.append(ExitTrace(k, int(preds[i]), float(conf[i]), float(scores[i])))


def results_for(exited: list[Exited], logits: torch.Tensor, rows: list[Row], labels: list[str],
                num_exits: int, now: float) -> list[ClassifyResult]:
    """Build the results of the rows that left (probabilities copied to the host once)."""
    index = {id(r): i for i, r in enumerate(rows)}
    sel = torch.tensor([index[id(e.row)] for e in exited], device=logits.device)
    probs = torch.softmax(logits[sel].float(), dim=-1).cpu()  # (E, C)
    out = []
    for e, p in zip(exited, probs.tolist(), strict=True):
        label_id = e.prediction
        h = e.row.handle
        queue_ms = (e.row.admitted - h.arrival) * 1e3
        compute_ms = (now - e.row.admitted) * 1e3
        out.append(ClassifyResult(
            label=labels[label_id] if label_id < len(labels) else str(label_id),
            label_id=label_id, probabilities=[round(x, 6) for x in p], exit_layer=e.layer,
            num_layers=num_exits, confidence=round(p[label_id], 6),
            budget_forced=e.budget_forced, truncated=bool(h.encoded.truncated[e.row.index]),
            queue_ms=round(queue_ms, 3), compute_ms=round(compute_ms, 3),
            total_ms=round(queue_ms + compute_ms, 3),
            trace=list(e.row.trace) if e.row.trace is not None else None))
    return out
