"""Text classification as a task adapter on the engine loop (service/engine/loop.py),
at layer granularity: schedule → run → update.

    schedule: admit queued rows while fewer than `max_batch_size` are in flight; admitted rows
              are embedded and form a new cohort at layer 0 (one per model and policy)
    run:      every cohort advances one layer; cohorts of one model at the same layer are
              merged into one batch for the step
    update:   the policy decides per row; the last exit always fires; a latency budget forces
              an exit when one more round would not fit (the step-cost estimate for the rows
              expected next round, service/engine/cost.py); exited rows are answered at once and
              leave their cohort, freeing room for queued rows at the next schedule

So a batch never waits for its slowest sample, and waiting requests join between layers
(layer-level continuous batching). Errors while stepping fail only the requests in that step.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch

from models.base import Encoded, MergeableBatch
from service.engine.cohort import (
    Cohort,
    Row,
    advance_group,
    concatenate,
    results_for,
    run_group,
    update,
)
from service.engine.config import EngineConfig
from service.engine.handles import RequestHandle, now
from service.engine.loop import EngineLoop, RowGauges
from service.engine.one_call import TokenRows, join_encoded, one_call, whole_group
from service.engine.served import ServedModel
from service.engine.shadow import ShadowRunner
from service.protocol import DeadlineExceeded, InternalError
from service.stats import IterationStats, SampleStats, StatsSink

log = logging.getLogger("eeserve.engine")


T = TypeVar("T")


@dataclass(frozen=True)
class Ran(Generic[T]):
    """What one guarded model call gave: its value, or (None and) cohorts to run again."""

    value: T | None
    retry: list[Cohort]


@dataclass(frozen=True)
class Job:
    """One model call of a round: cohorts of one model at one layer, with or without heads."""

    served: ServedModel
    cohorts: list[Cohort]
    head: bool
    whole: bool = False  # token cohorts through every layer in one call (one_call.py)


@dataclass(frozen=True)
class Called:
    """What a model call returned (or raised), and how long it took."""

    value: Any
    error: BaseException | None
    seconds: float


def _call(job: Job, clock: Callable[[], float] = now) -> Called:
    """Run one layer for a job's cohorts (any thread: no engine state is touched)."""
    t0 = clock()
    fn = whole_group if job.whole else run_group if job.head else advance_group
    try:
        model = job.served.text_model  # a text model (checked when queued)
        return Called(fn(model, job.cohorts), None, clock() - t0)
    except Exception as e:  # noqa: BLE001 -- handled by the worker thread (_finish)
        return Called(None, e, clock() - t0)


@dataclass(frozen=True)
class Chunk:
    handle: RequestHandle
    start: int  # first row of the request in this chunk
    stop: int


class TextTask(EngineLoop[RequestHandle, Chunk]):
    """The text-classification task adapter on the engine loop (layer-level batching)."""

    noun = "texts"

    def __init__(self, models: Mapping[str, ServedModel], cfg: EngineConfig, sink: StatsSink,
                 clock: Callable[[], float] = now, gauges: RowGauges | None = None):
        super().__init__(cfg.max_batch_size, cfg.queue_limit, sink, clock, gauges)
        self.models = models
        self.cfg = cfg
        self.cohorts: list[Cohort] = []
        self.row_cap = cfg.max_batch_size  # lowered after a CUDA out-of-memory error
        self.deferred_rounds = 0  # rounds admission has waited for room (see _should_admit)
        self.last_arrival: float | None = None
        self.gap_ema_s = float("inf")  # smoothed time between request arrivals
        self.round_rows = 0  # rows in the current round (latency budgets estimate the next)
        # [shadow] sampled early-exited rows run on to the last exit when the engine is idle
        self.pool = ThreadPoolExecutor(cfg.parallel_steps, thread_name_prefix="eeserve-step") \
            if cfg.parallel_steps > 1 else None  # see _call_all
        self.shadow = ShadowRunner(models, cfg.shadow, sink,
                                   {n: m.live for n, m in models.items() if m.live is not None},
                                   cfg.max_batch_size)

    def _note_arrival(self, t: float) -> None:
        if self.last_arrival is not None:
            gap = max(0.0, t - self.last_arrival)
            self.gap_ema_s = gap if self.gap_ema_s == float("inf") else \
                0.8 * self.gap_ema_s + 0.2 * gap
        self.last_arrival = t

    def active_rows(self) -> int:
        return sum(len(c) for c in self.cohorts)

    def in_flight(self) -> list[RequestHandle]:
        return [r.handle for c in self.cohorts for r in c.rows]

    # ---- the task adapter's part of the loop -----------------------------------------------
    def _has_idle_work(self) -> bool:
        return self.shadow.has_work()  # [shadow] idle work, below live traffic

    def _idle_step(self) -> None:
        self.shadow.step()  # [shadow] idle: one layer of shadow work

    def _on_exit(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)

    def _rows_of(self, taken: list[Chunk]) -> int:
        return sum(c.stop - c.start for c in taken)

    def _should_admit(self, free: int) -> bool:
        """Admit queued rows now, or let the running cohorts free more room first?

        Rows admitted one or two at a time form tiny cohorts that are stepped separately at
        every layer; on a CPU a layer costs ~30 % more per row at batch 3 than at batch 8. So
        while cohorts are running, admission waits until half the batch is free -- unless the
        oldest queued request has already waited `admit_wait_rounds` rounds.
        """
        if not self.pending or free <= 0:
            return False
        if not self.cohorts or free >= max(1, self.cfg.max_batch_size // 2):
            return True
        self.deferred_rounds += 1
        if self.deferred_rounds > self.cfg.admit_wait_rounds:
            self.deferred_rounds = 0
            return True
        return False

    def _batching_window(self) -> None:
        """Idle engine: wait up to `max_queue_delay_ms` after the oldest arrival for a fuller
        batch (caller holds the lock) -- but only when requests have recently been arriving
        faster than that window, so a lone client never pays the delay."""
        window = self.cfg.max_queue_delay_ms / 1e3
        if window <= 0 or not self.pending or self.gap_ema_s > window:
            return
        until = self.pending[0].arrival + window
        while self.pending_rows < self.cfg.max_batch_size and not self.stopped:
            left = until - self.clock()
            if left <= 0:
                return
            self.cond.wait(left)

    def _take(self, free: int) -> list[Chunk]:
        """Pop up to `free` rows from the queue when it is time to admit (a large request may
        be split across rounds)."""
        chunks: list[Chunk] = []
        if not self._should_admit(free):
            return chunks
        t = self.clock()
        while self.pending and free > 0:
            h = self.pending[0]
            if h.done or h.expired(t):
                self.pending.popleft()
                self.pending_rows -= h.pending_rows
                if not h.done:
                    h.fail(DeadlineExceeded(f"request {h.request_id} passed its deadline while "
                                            "queued", "deadline_ms"))
                continue
            n = min(free, h.pending_rows)
            chunks.append(Chunk(h, h.next_row, h.next_row + n))
            h.next_row += n
            h.queue_s = max(h.queue_s, t - h.arrival)
            self.pending_rows -= n
            free -= n
            if h.pending_rows == 0:
                self.pending.popleft()
        return chunks

    def _admit(self, chunks: list[Chunk]) -> None:
        """Embed admitted rows and add one layer-0 cohort per (model, policy)."""
        groups: dict[tuple[str, object], list[Chunk]] = defaultdict(list)
        for c in chunks:
            groups[(c.handle.model, c.handle.policy)].append(c)
        for (model_name, _), group in groups.items():
            served = self.models[model_name]
            try:
                self.cohorts.append(self._cohort(served, group))
            except Exception as e:  # noqa: BLE001 -- fail these requests, keep serving
                self._fail([c.handle for c in group], e)

    def _cohort(self, served: ServedModel, group: list[Chunk]) -> Cohort:
        """Admitted rows at layer 0: embedded, or as tokens when they take one call
        (one_call.py)."""
        t = self.clock()
        rows = []
        for c in group:
            h = c.handle
            rows += [Row(h, i, t, h.budget_end(t), [] if h.return_trace else None)
                     for i in range(c.start, c.stop)]
        slices = [_slice(c.handle.encoded, c.start, c.stop) for c in group]
        batch: MergeableBatch
        if one_call(served, group[0].handle.policy_obj, [c.handle for c in group]):
            batch = cast(MergeableBatch, TokenRows(join_encoded(slices)))
        else:
            batches = [served.text_model.embed(e) for e in slices]
            batch = batches[0] if len(batches) == 1 else concatenate(batches)
        first = group[0].handle
        return Cohort.start(served.name, first.policy.name, first.policy_obj, batch, rows,
                            getattr(served.model, "device", "cpu"))

    def _run_round(self) -> None:
        self._drop_finished()
        self.round_rows = self.active_rows()
        groups: dict[tuple[str, int, str], list[Cohort]] = defaultdict(list)
        survivors: list[Cohort] = []
        for c in self.cohorts:
            if not self._runs_now(c):
                c.skipped += 1
                survivors.append(c)
                continue
            c.skipped = 0
            kind = "whole" if isinstance(c.batch, TokenRows) else \
                "head" if c.needs_head(self.models[c.model].num_exits) else "advance"
            groups[(c.model, c.layer, kind)].append(c)
        jobs = [Job(self.models[name], part, kind != "advance", kind == "whole")
                for (name, _, kind), cohorts in groups.items()
                for part in self._parts(cohorts, kind == "whole")]
        for job, called in zip(jobs, self._call_all(jobs), strict=True):
            ran = self._finish(job, called)
            if ran.value is None:
                survivors.extend(ran.retry)
            elif job.head:
                survivors.extend(self._after_step(job.served, job.cohorts, ran.value))
            else:
                survivors.extend(c.stepped(b) for c, b in zip(job.cohorts, ran.value, strict=True))
        self.cohorts = _merge(survivors, self.row_cap)

    def _parts(self, cohorts: list[Cohort], whole: bool) -> list[list[Cohort]]:
        """A group's model calls: at most `row_cap` rows each; a one-call group is cut into
        `parallel_steps` calls, so that on its own it still keeps the step pool's threads busy
        (the layer path gets that from cohorts at different layers)."""
        if whole and self.pool is not None:
            rows = sum(len(c) for c in cohorts)
            cap = max(1, min(self.row_cap, -(-rows // self.cfg.parallel_steps)))
            return [[piece] for c in cohorts for piece in c.split(cap)]
        return _cap(cohorts, self.row_cap)

    def _drop_finished(self) -> None:
        """Rows of cancelled, failed or expired requests leave before the next layer runs
        (expired ones answered 504); the other rows of their cohorts go on."""
        t = self.clock()
        kept: list[Cohort] = []
        for c in self.cohorts:
            keep = [not r.handle.done and not r.handle.expired(t) for r in c.rows]
            if not all(keep):
                for r in c.rows:
                    if not r.handle.done and r.handle.expired(t):
                        r.handle.fail(DeadlineExceeded(f"request {r.handle.request_id} passed "
                                                       f"its deadline after exit {c.layer}",
                                                       "deadline_ms"))
                left = c.filter(keep)
                if left is not None:
                    kept.append(left)
            else:
                kept.append(c)
        self.cohorts = kept

    def _call_all(self, jobs: list[Job]) -> list[Called]:
        """Run this round's model calls: on the worker thread, or -- when there are several and
        every model's layer call releases the GIL (onnx) -- `parallel_steps` at a time, so
        cohorts at different layers use both cores. Decisions stay on the worker thread."""
        if self.pool is None or len(jobs) < 2 or \
                any(getattr(j.served.model, "backend", "") != "onnx" for j in jobs):
            return [_call(j, self.clock) for j in jobs]
        return list(self.pool.map(functools.partial(_call, clock=self.clock), jobs))

    def _runs_now(self, c: Cohort) -> bool:
        """Catch-up scheduling: the least advanced cohorts of a model run, deeper ones wait for
        them to reach their layer and merge (bigger batches), for at most `catch_up_rounds`
        rounds; cohorts with latency budgets never wait."""
        if self.cfg.catch_up_rounds <= 0 or c.skipped >= self.cfg.catch_up_rounds:
            return True
        if any(r.budget_end is not None for r in c.rows):
            return True
        lowest = min(o.layer for o in self.cohorts if o.model == c.model)
        return c.layer == lowest

    def _finish(self, job: Job, called: Called) -> Ran[Any]:
        """A model call's outcome, on the worker thread. A failure fails only these requests;
        out of memory hands the cohorts back split, for the next round."""
        if isinstance(called.error, torch.OutOfMemoryError):
            return Ran(None, self._out_of_memory(job.cohorts))
        if called.error is not None:
            self._fail([r.handle for c in job.cohorts for r in c.rows], called.error)
            return Ran(None, [])
        rows, first = sum(len(c) for c in job.cohorts), job.cohorts[0].layer + 1
        last = job.served.num_exits if job.whole else first
        for k in range(first, last + 1):  # a one-call job counts as the layers it computed
            self.sink.record_iteration(IterationStats(job.served.name, rows, k,
                                                      called.seconds / (last - first + 1)))
        return Ran(called.value, [])

    def _after_step(self, served: ServedModel, cohorts: list[Cohort],
                    outs: list[tuple[torch.Tensor, MergeableBatch]]) -> list[Cohort]:
        kept = []
        for c, (logits, batch) in zip(cohorts, outs, strict=True):
            try:
                kept.extend(self._update(served, c, logits, batch))
            except Exception as e:  # noqa: BLE001
                self._fail([r.handle for r in c.rows], e)
        return kept

    def _update(self, served: ServedModel, c: Cohort, logits: torch.Tensor,
                batch: MergeableBatch) -> list[Cohort]:
        t = self.clock()
        budgets = any(r.budget_end is not None for r in c.rows)
        out = update(c, logits, batch, served.num_exits, t,
                     served.step_cost.estimate(self._next_round_rows()) if budgets else 0.0)
        if out.exited:
            results = results_for(out.exited, logits, c.rows, served.labels, served.num_exits, t)
            for e, r in zip(out.exited, results, strict=True):
                h = e.row.handle
                h.compute_s = max(h.compute_s, r.compute_ms / 1e3)
                # recorded before the answer can leave: a scrape after it counts the row
                self.sink.record_sample(SampleStats(served.name, c.policy_name, e.layer,
                                                    served.num_exits, e.budget_forced))
                h.set_row(e.row.index, r)
            # [shadow] answered already; sampled early rows may run on later, when idle
            self.shadow.capture(served, c, batch, out.exited, busy=self.pending_rows > 0)
        return [out.cohort] if out.cohort is not None else []

    def _out_of_memory(self, cohorts: list[Cohort]) -> list[Cohort]:
        """Halve the row cap and retry these cohorts, split, at the next round."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows = sum(len(c) for c in cohorts)
        if rows <= 1:
            self._fail([r.handle for c in cohorts for r in c.rows],
                       InternalError("out of memory on a single row"))
            return []
        self.row_cap = max(1, min(self.row_cap, rows) // 2)
        log.warning("out of memory at %d rows; row cap now %d", rows, self.row_cap)
        return [part for c in cohorts for part in c.split(self.row_cap)]

    def _next_round_rows(self) -> int:
        """Rows the next round is expected to step: this round's, plus queued rows that may be
        admitted (at most the batch) -- a high guess, so a budget is kept under rising load."""
        return min(self.cfg.max_batch_size, self.round_rows + self.pending_rows)

    def _observe_round(self, seconds: float, rows: int) -> None:
        """One round is one layer step for every row in it: the wait between a row's layers."""
        for name in {c.model for c in self.cohorts}:
            self.models[name].step_cost.update(seconds, rows)


def _merge(cohorts: list[Cohort], cap: int) -> list[Cohort]:
    """Join cohorts of the same model and policy that reached the same layer (at most `cap`
    rows per cohort, so a batch split after an out-of-memory error stays split)."""
    by_key: dict[tuple[str, int, int, type], list[Cohort]] = defaultdict(list)
    for c in cohorts:  # token cohorts (one_call.py) merge only with each other
        by_key[(c.model, c.layer, id(c.policy), type(c.batch))].append(c)
    out = []
    for same in by_key.values():
        for group in _cap(same, cap):
            out.append(Cohort.concatenate(group))
    return out


def _slice(enc: Encoded, start: int, stop: int) -> Encoded:
    if start == 0 and stop == len(enc.lengths):
        return enc
    mask = enc.attention_mask[start:stop]  # (n, T)
    t = max(enc.lengths[start:stop])
    return Encoded(enc.input_ids[start:stop, :t], mask[:, :t], enc.lengths[start:stop],
                   enc.truncated[start:stop])


def _cap(cohorts: list[Cohort], cap: int) -> list[list[Cohort]]:
    """Split a same-layer group into merged steps of at most `cap` rows (cohorts kept whole)."""
    parts: list[list[Cohort]] = [[]]
    size = 0
    for c in cohorts:
        if parts[-1] and size + len(c) > cap:
            parts.append([])
            size = 0
        parts[-1].append(c)
        size += len(c)
    return parts
