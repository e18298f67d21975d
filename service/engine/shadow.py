"""Shadow checks: sampled early-exited rows run on to the last exit, below live traffic.

    capture (live path, after a cohort's update): of the rows that just left, keep those sampled
            (`shadow_rate`, or the request asked with `shadow: true`). A row answered at the last
            exit is its own full-depth answer: it counts as an agreement at once. A row answered
            earlier is copied out of the stepped batch into a shadow cohort -- unless live work is
            waiting (dropped, reason "load") or the shadow backlog is full ("backlog").
    step    (only when the engine is idle: no live cohort, nothing queued): one layer of the most
            advanced shadow cohort; at the last exit compare argmax with the early answer and
            record the check (service/engine/live.py). Rows older than `max_age_s` are dropped
            ("stale"). Live work arriving during a shadow step waits at most that one layer.

The live answer was sent before any of this: shadow work never changes a response, and it never
shares a batch with live rows. Engine seam: this module filters and merges batches
(the backend's batch `filter` / `concatenate`) and calls `model.advance` / `model.step`;
see `_take_rows` and `_merge_batches`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from models.base import MergeableBatch
from service.engine.cohort import Cohort, Exited
from service.engine.config import ShadowConfig
from service.engine.handles import PolicyKey, now
from service.engine.live import LiveAgreement, policy_label
from service.engine.served import ServedModel
from service.stats import ShadowCheckStats, ShadowDropStats, StatsSink

log = logging.getLogger("eeserve.engine")


@dataclass(frozen=True)
class ShadowRow:
    key: PolicyKey
    policy: object  # the ExitPolicy that answered (retuning acts on it)
    exit_layer: int  # where the live answer came from
    prediction: int  # the live answer
    captured: float  # perf_counter() when it left the live path


@dataclass
class ShadowCohort:
    model: str
    batch: MergeableBatch  # (B, T, H) hidden states after `batch.layer` layers (any backend)
    rows: list[ShadowRow]

    @property
    def layer(self) -> int:
        return self.batch.layer


def _take_rows(batch: MergeableBatch, rows: list[int]) -> MergeableBatch:
    """The given rows of a stepped batch (engine seam: batch filtering)."""
    keep = torch.zeros(len(batch), dtype=torch.bool)
    keep[rows] = True
    return batch.filter(keep)


def _merge_batches(batches: list[MergeableBatch]) -> MergeableBatch:
    """Batches at the same layer as one (engine seam: batch merging)."""
    return batches[0] if len(batches) == 1 else type(batches[0]).concatenate(batches)


class ShadowRunner:
    def __init__(self, models: Mapping[str, ServedModel], cfg: ShadowConfig, sink: StatsSink,
                 live: Mapping[str, LiveAgreement], max_batch: int):
        self.models = models
        self.cfg = cfg
        self.sink = sink
        self.live = live
        self.max_batch = max_batch
        self.cohorts: list[ShadowCohort] = []
        self.rng = random.Random(cfg.seed)

    def rows(self) -> int:
        return sum(len(c.rows) for c in self.cohorts)

    def has_work(self) -> bool:
        """Shadow rows to run, or checks not yet judged."""
        return bool(self.cohorts) or any(lv.dirty() for lv in self.live.values())

    # ---- live path ---------------------------------------------------------------------------
    def capture(self, served: ServedModel, c: Cohort, batch: MergeableBatch,
                exited: list[Exited],
                busy: bool) -> None:
        """Sample the rows that just left cohort `c` (`batch`: the stepped batch, all rows)."""
        rate = self.cfg.rate_for(served.name)
        live = self.live.get(served.name)
        if live is None or not exited or (rate <= 0 and not any(
                e.row.handle.shadow for e in exited)):
            return
        early: list[Exited] = []
        for e in exited:
            if e.budget_forced or not (e.row.handle.shadow or self.rng.random() < rate):
                continue
            if e.layer >= served.num_exits:
                live.record(e.row.handle.policy, c.policy, e.layer, True)
                self._check(served.name, policy_label(e.row.handle.policy), e.layer, True)
            else:
                early.append(e)
        if not early:
            return
        if busy:
            return self._drop(served.name, "load", len(early))
        room = self.cfg.max_rows - self.rows()
        if room < len(early):
            self._drop(served.name, "backlog", len(early) - max(room, 0))
            early = early[:max(room, 0)]
            if not early:
                return
        index = {id(r): i for i, r in enumerate(c.rows)}
        t = now()
        self.cohorts.append(ShadowCohort(
            served.name, _take_rows(batch, [index[id(e.row)] for e in early]),
            [ShadowRow(e.row.handle.policy, c.policy, e.layer, e.prediction, t) for e in early]))

    # ---- idle path ---------------------------------------------------------------------------
    def step(self) -> None:
        """One layer of shadow work or one judgement (call only when no live work is running or
        waiting). Never raises: a failure drops the shadow work, the engine keeps serving."""
        try:
            self._step()
        except Exception as e:  # noqa: BLE001
            log.exception("shadow work failed; dropped", extra={"error": f"{type(e).__name__}"})
            for c in self.cohorts:
                self._drop(c.model, "error", len(c.rows))
            self.cohorts = []
            for live in self.live.values():
                live.mark_clean()

    def _step(self) -> None:
        self._drop_stale()
        if not self.cohorts:
            for live in self.live.values():
                if live.dirty():
                    live.refresh(limit=1)  # one judgement per idle step (a few ms)
                    return
            return
        deepest = max(self.cohorts, key=lambda c: c.layer)
        group: list[ShadowCohort] = []
        size = 0
        for c in self.cohorts:  # the deepest model/layer, at most `max_batch` rows (or one)
            if c.model == deepest.model and c.layer == deepest.layer and (
                    not group or size + len(c.rows) <= self.max_batch):
                group.append(c)
                size += len(c.rows)
        rest = [c for c in self.cohorts if all(c is not g for g in group)]
        served = self.models[deepest.model]
        rows = [r for c in group for r in c.rows]
        try:
            batch = _merge_batches([c.batch for c in group])
            k = batch.layer + 1
            if k < served.num_exits:
                nxt = served.text_model.advance(batch, k)
                self.cohorts = [*rest, ShadowCohort(served.name, nxt, rows)]
                return
            final = served.text_model.step(batch, k).logits.argmax(dim=-1).tolist()  # (B,)
        except Exception as e:  # noqa: BLE001 -- shadow work never fails a request
            log.warning("shadow step failed", extra={"model": served.name,
                                                     "error": f"{type(e).__name__}: {e}"})
            self.cohorts = rest
            return self._drop(served.name, "error", len(rows))
        live = self.live[served.name]
        for r, full in zip(rows, final, strict=True):
            agreed = int(full) == r.prediction
            live.record(r.key, r.policy, r.exit_layer, agreed)  # type: ignore[arg-type]
            self._check(served.name, policy_label(r.key), r.exit_layer, agreed)
        self.cohorts = rest

    def _drop_stale(self) -> None:
        t = now()
        keep = []
        for c in self.cohorts:
            if t - min(r.captured for r in c.rows) > self.cfg.max_age_s:
                self._drop(c.model, "stale", len(c.rows))
            else:
                keep.append(c)
        self.cohorts = keep

    def _drop(self, model: str, reason: str, rows: int) -> None:
        live = self.live.get(model)
        if live is not None:
            live.note_dropped(reason, rows)
        record = getattr(self.sink, "record_shadow_dropped", None)
        if record is not None:
            record(ShadowDropStats(model, reason, rows))

    def _check(self, model: str, policy: str, exit_layer: int, agreed: bool) -> None:
        record = getattr(self.sink, "record_shadow", None)
        if record is not None:
            record(ShadowCheckStats(model, policy, exit_layer, agreed))
