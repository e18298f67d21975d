"""The engine loop on the worker thread: schedule → run → update, at layer granularity.

    schedule: admit queued rows while fewer than `max_batch_size` are in flight; admitted rows
              are embedded and form a new cohort at layer 0 (one per model and policy)
    run:      every cohort advances one layer; cohorts of one model at the same layer are
              merged into one batch for the step
    update:   the policy decides per row; the last exit always fires; a latency budget forces
              an exit when one more step would not fit; exited rows are answered at once and
              leave their cohort, freeing room for queued rows at the next schedule

So a batch never waits for its slowest sample, and waiting requests join between layers
(layer-level continuous batching). Errors while stepping fail only the requests in that step.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast

import torch

from models.base import Encoded, MergeableBatch, StepModel
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
from service.engine.served import ServedModel
from service.engine.shadow import ShadowRunner
from service.protocol import DeadlineExceeded, InternalError, NotReady, Overloaded
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


@dataclass(frozen=True)
class Called:
    """What a model call returned (or raised), and how long it took."""

    value: Any
    error: BaseException | None
    seconds: float


def _call(job: Job) -> Called:
    """Run one layer for a job's cohorts (any thread: no engine state is touched)."""
    t0 = now()
    fn = run_group if job.head else advance_group
    try:
        model = cast(StepModel, job.served.model)  # a text model (checked when queued)
        return Called(fn(model, job.cohorts), None, now() - t0)
    except Exception as e:  # noqa: BLE001 -- handled by the worker thread (_finish)
        return Called(None, e, now() - t0)


@dataclass(frozen=True)
class Chunk:
    handle: RequestHandle
    start: int  # first row of the request in this chunk
    stop: int


class Scheduler:
    def __init__(self, models: Mapping[str, ServedModel], cfg: EngineConfig, sink: StatsSink):
        self.models = models
        self.cfg = cfg
        self.sink = sink
        self.cond = threading.Condition()
        self.pending: deque[RequestHandle] = deque()
        self.pending_rows = 0
        self.reserved_rows = 0  # rows of requests being tokenised, counted against the limit
        self.cohorts: list[Cohort] = []
        self.row_cap = cfg.max_batch_size  # lowered after a CUDA out-of-memory error
        self.deferred_rounds = 0  # rounds admission has waited for room (see _should_admit)
        self.closed = False  # no new requests
        self.stopped = False  # the loop should end once idle (or at once when `abort`)
        self.abort = False
        self.last_arrival: float | None = None
        self.gap_ema_s = float("inf")  # smoothed time between request arrivals
        # [shadow] sampled early-exited rows run on to the last exit when the engine is idle
        self.pool = ThreadPoolExecutor(cfg.parallel_steps, thread_name_prefix="eeserve-step") \
            if cfg.parallel_steps > 1 else None  # see _call_all
        self.shadow = ShadowRunner(models, cfg.shadow, sink,
                                   {n: m.live for n, m in models.items() if m.live is not None},
                                   cfg.max_batch_size)

    # ---- called from the event loop ---------------------------------------------------------
    def reserve(self, rows: int) -> None:
        """Claim queue room before tokenising, so overload is refused before any work."""
        with self.cond:
            if self.closed:
                raise NotReady("server is shutting down; not accepting new requests")
            waiting = self.pending_rows + self.reserved_rows
            if waiting + rows > self.cfg.queue_limit:
                raise Overloaded(f"queue full: {waiting} texts waiting, limit "
                                 f"{self.cfg.queue_limit} (queue_limit)", retry_after_s=1.0)
            self.reserved_rows += rows

    def release(self, rows: int) -> None:
        """Give back a reservation (after `submit`, or when the request failed before it)."""
        with self.cond:
            self.reserved_rows -= rows

    def submit(self, h: RequestHandle) -> None:
        """Queue a request whose rows were reserved (the reservation passes to the queue)."""
        with self.cond:  # accepted when its rows were reserved, even if closing since
            self.reserved_rows -= h.size
            if self.stopped or self.abort:
                raise NotReady("server is shutting down; not accepting new requests")
            self.pending.append(h)
            self.pending_rows += h.size
            self._note_arrival(h.arrival)
            self.sink.set_queue_depth(self.pending_rows)
            self.cond.notify()

    def _note_arrival(self, t: float) -> None:
        if self.last_arrival is not None:
            gap = max(0.0, t - self.last_arrival)
            self.gap_ema_s = gap if self.gap_ema_s == float("inf") else \
                0.8 * self.gap_ema_s + 0.2 * gap
        self.last_arrival = t

    def active_rows(self) -> int:
        return sum(len(c) for c in self.cohorts)

    def idle(self) -> bool:
        """Nothing queued, in flight, or being tokenised (reserved rows: accepted requests)."""
        with self.cond:
            return not self.pending and not self.cohorts and self.reserved_rows <= 0

    # ---- the worker loop -----------------------------------------------------------------------
    def run_forever(self) -> None:
        while True:
            chunks = self._schedule()
            if chunks is None:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)
                return
            if not chunks and not self.cohorts:
                self.shadow.step()  # [shadow] idle: one layer of shadow work
                continue
            started = now()
            self._admit(chunks)
            self._run_round()
            self._observe_round(now() - started)

    def _schedule(self) -> list[Chunk] | None:
        with self.cond:
            while not self.cohorts and not self.pending:
                if self.stopped or self.abort:
                    return None
                if self.shadow.has_work():  # [shadow] idle work, below live traffic
                    return []
                self.cond.wait(0.5)
            if self.abort:
                return None
            if not self.cohorts:
                self._batching_window()
            free = self.cfg.max_batch_size - self.active_rows()
            chunks = self._take(free) if self._should_admit(free) else []
            self.sink.set_queue_depth(self.pending_rows)
        set_active = getattr(self.sink, "set_active_rows", None)
        if set_active is not None:
            set_active(self.active_rows() + sum(c.stop - c.start for c in chunks))
        return chunks

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
            left = until - now()
            if left <= 0:
                return
            self.cond.wait(left)

    def _take(self, free: int) -> list[Chunk]:
        """Pop up to `free` rows from the queue (a large request may be split across rounds)."""
        chunks: list[Chunk] = []
        t = now()
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
        t = now()
        batches, rows = [], []
        for c in group:
            batches.append(served.text_model.embed(_slice(c.handle.encoded, c.start, c.stop)))
            h = c.handle
            for i in range(c.start, c.stop):
                end = t + h.budget_s if h.budget_s is not None else None
                rows.append(Row(h, i, t, end, [] if h.return_trace else None))
        batch = batches[0] if len(batches) == 1 else concatenate(batches)
        policy = group[0].handle.policy_obj
        state = policy.init_state(len(rows), getattr(served.model, "device", "cpu"))
        return Cohort(served.name, group[0].handle.policy.name, policy, batch, state, rows)

    def _run_round(self) -> None:
        groups: dict[tuple[str, int, bool], list[Cohort]] = defaultdict(list)
        survivors: list[Cohort] = []
        for c in self.cohorts:
            if not self._runs_now(c):
                c.skipped += 1
                survivors.append(c)
                continue
            c.skipped = 0
            head = c.needs_head(self.models[c.model].num_exits)
            groups[(c.model, c.layer, head)].append(c)
        jobs = [Job(self.models[name], part, head) for (name, _, head), cohorts in groups.items()
                for part in _cap(cohorts, self.row_cap)]
        for job, called in zip(jobs, self._call_all(jobs), strict=True):
            ran = self._finish(job, called)
            if ran.value is None:
                survivors.extend(ran.retry)
            elif job.head:
                survivors.extend(self._after_step(job.served, job.cohorts, ran.value))
            else:
                survivors.extend(replace(c, batch=b)
                                 for c, b in zip(job.cohorts, ran.value, strict=True))
        self.cohorts = _merge(survivors, self.row_cap)

    def _call_all(self, jobs: list[Job]) -> list[Called]:
        """Run this round's model calls: on the worker thread, or -- when there are several and
        every model's layer call releases the GIL (onnx) -- `parallel_steps` at a time, so
        cohorts at different layers use both cores. Decisions stay on the worker thread."""
        if self.pool is None or len(jobs) < 2 or \
                any(getattr(j.served.model, "backend", "") != "onnx" for j in jobs):
            return [_call(j) for j in jobs]
        return list(self.pool.map(_call, jobs))

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
        self.sink.record_iteration(IterationStats(job.served.name,
                                                  sum(len(c) for c in job.cohorts),
                                                  job.cohorts[0].layer + 1, called.seconds))
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
        t = now()
        out = update(c, logits, batch, served.num_exits, t, served.step_cost.seconds)
        if out.exited:
            results = results_for(out.exited, logits, c.rows, served.labels, served.num_exits, t)
            for e, r in zip(out.exited, results, strict=True):
                h = e.row.handle
                h.compute_s = max(h.compute_s, r.compute_ms / 1e3)
                h.set_row(e.row.index, r)
                self.sink.record_sample(SampleStats(served.name, c.policy_name, e.layer,
                                                    served.num_exits, e.budget_forced))
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
        return [part for c in cohorts for part in _split(c, self.row_cap)]

    def _observe_round(self, seconds: float) -> None:
        for name in {c.model for c in self.cohorts}:
            self.models[name].step_cost.update(seconds)

    def _fail(self, handles: list[RequestHandle], e: BaseException) -> None:
        seen: set[int] = set()
        for h in handles:
            if id(h) in seen:
                continue
            seen.add(id(h))
            log.error("step failed", extra={"request_id": h.request_id,
                                            "error": f"{type(e).__name__}: {e}"})
            h.fail(InternalError(f"internal error while running the model; quote request id "
                                 f"{h.request_id}"))

    # ---- shutdown -----------------------------------------------------------------------------
    def drop_everything(self, reason: str) -> None:
        """Fail every queued and in-flight request (end of the shutdown grace period)."""
        with self.cond:
            handles = list(self.pending) + [r.handle for c in self.cohorts for r in c.rows]
            self.pending.clear()
            self.pending_rows = 0
            self.abort = True
            self.cond.notify_all()
        for h in handles:
            h.fail(NotReady(reason))


def _merge(cohorts: list[Cohort], cap: int) -> list[Cohort]:
    """Join cohorts of the same model and policy that reached the same layer (at most `cap`
    rows per cohort, so a batch split after an out-of-memory error stays split)."""
    by_key: dict[tuple[str, int, int], list[Cohort]] = defaultdict(list)
    for c in cohorts:
        by_key[(c.model, c.layer, id(c.policy))].append(c)
    out = []
    for same in by_key.values():
        for group in _cap(same, cap):
            out.append(group[0] if len(group) == 1 else _join(group))
    return out


def _join(group: list[Cohort]) -> Cohort:
    first = group[0]
    return Cohort(first.model, first.policy_name, first.policy,
                  concatenate([c.batch for c in group]),
                  type(first.state).concatenate([c.state for c in group]),
                  [r for c in group for r in c.rows])


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


def _split(c: Cohort, cap: int) -> list[Cohort]:
    """A cohort cut into pieces of at most `cap` rows (same layer, same policy)."""
    if len(c) <= cap:
        return [c]
    out = []
    for start in range(0, len(c), cap):
        keep = torch.zeros(len(c), dtype=torch.bool)  # (B,) the batch moves it if needed
        keep[start:start + cap] = True
        out.append(Cohort(c.model, c.policy_name, c.policy, c.batch.filter(keep),
                          c.state.filter(keep), c.rows[start:start + cap]))
    return out
