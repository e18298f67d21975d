"""Captioning as a task adapter on the engine loop (service/engine/loop.py): free-running
decoding with a per-token early exit, on its own worker thread.

    CaptionTask: token-level continuous batching. Queued images are encoded and join a cohort
                 (one per model and policy, service/engine/caption_cohort.py) between tokens;
                 each token is decoded layer by layer (service/engine/caption_decode.py);
                 finished captions (EOS, max_tokens) leave; each token is streamed to its
                 request as soon as it is decided.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable

import torch

from models.captioner import MultiExitCaptioner
from service.engine.caption_cohort import CaptionCohort, CaptionHandle, CaptionRow
from service.engine.caption_decode import TokenStep, caption_text, decode_token, token_info
from service.engine.config import ShadowConfig
from service.engine.handles import now
from service.engine.loop import EngineLoop, RowGauges
from service.engine.served import ServedModel
from service.protocol import (
    CaptionEvent,
    CaptionResult,
    DeadlineExceeded,
    InternalError,
)
from service.stats import CaptionStats, IterationStats, SampleStats, ShadowCheckStats, StatsSink

log = logging.getLogger("eeserve.engine")


class CaptionTask(EngineLoop[CaptionHandle, CaptionHandle]):
    """The captioning task adapter on the engine loop: admit → one token per cohort → answer
    and drop (token-level continuous batching)."""

    noun = "images"
    limit_setting = "caption_queue_limit"

    def __init__(self, max_rows: int, queue_limit: int, sink: StatsSink,
                 shadow: ShadowConfig | None = None, clock: Callable[[], float] = now,
                 gauges: RowGauges | None = None):
        super().__init__(max_rows, queue_limit, sink, clock, gauges)
        self.shadow = shadow or ShadowConfig()
        self.rng = random.Random(self.shadow.seed)
        self.cohorts: list[CaptionCohort] = []

    def active_rows(self) -> int:
        return sum(len(c.rows) for c in self.cohorts)

    def in_flight(self) -> list[CaptionHandle]:
        return [r.handle for c in self.cohorts for r in c.rows]

    # ---- the task adapter's part of the loop -----------------------------------------------
    def _take(self, free: int) -> list[CaptionHandle]:
        """Whole requests that fit the free rows (one at least when nothing runs)."""
        taken: list[CaptionHandle] = []
        while self.pending and (free >= self.pending[0].size or not self.cohorts
                                and not taken):
            h = self.pending.popleft()
            self.pending_rows -= h.size
            free -= h.size
            taken.append(h)
        return taken

    def _rows_of(self, taken: list[CaptionHandle]) -> int:
        return sum(h.size for h in taken)

    def _admit(self, taken: list[CaptionHandle]) -> None:
        for h in taken:
            self._guard(functools.partial(self._admit_one, h), [h])

    def _run_round(self) -> None:
        for c in list(self.cohorts):
            self._guard(functools.partial(self._token, c), [r.handle for r in c.rows],
                        cohort=c)

    def _guard(self, fn: Callable[[], None], handles: list[CaptionHandle],
               cohort: CaptionCohort | None = None) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- fail only the requests involved
            log.exception("caption step failed")
            for h in handles:
                h.fail(InternalError(f"caption step failed: {type(e).__name__}"))
            if cohort is not None and cohort in self.cohorts:
                self.cohorts.remove(cohort)

    def _admit_one(self, h: CaptionHandle) -> None:
        t = self.clock()
        if h.done:
            return
        if h.expired(t):
            h.fail(DeadlineExceeded("deadline passed while queued", "deadline_ms"))
            return
        h.admitted_at = t
        h.next_row = h.size
        new = CaptionCohort.start(h, h.served.captioner.encode_images(
            h.pixels, capacity=h.max_tokens), t)
        for i, c in enumerate(self.cohorts):
            if c.served is h.served and c.key == h.policy:
                self.cohorts[i] = CaptionCohort.concatenate([c, new])
                return
        self.cohorts.append(new)

    def _token(self, c: CaptionCohort) -> None:
        t = self.clock()
        keep = [not r.handle.done and not r.handle.expired(t) for r in c.rows]
        for r in c.rows:
            if not r.handle.done and r.handle.expired(t):
                r.handle.fail(DeadlineExceeded("deadline passed while captioning", "deadline_ms"))
        if not all(keep):
            kept = self._drop(c, keep)
            if kept is None:
                return
            c = kept
        model = c.served.captioner
        name = c.served.name
        budget = None
        if any(r.handle.budget_s for r in c.rows):
            budget = torch.tensor([r.handle.budget_s or math.inf for r in c.rows])
        step = decode_token(model, c.state, c.policy, budget, c.served.step_cost,
                            self._shadow_rows(name, len(c.rows)), clock=self.clock)
        self._observe(c.served, step)
        for k, agreed in step.checks:
            record = getattr(self.sink, "record_shadow", None)
            if record is not None:
                record(ShadowCheckStats(name, c.key.name, k, agreed, token=True))
        done_at = self.clock()
        finished = []
        for i, r in enumerate(c.rows):
            tok, k = int(step.tokens[i]), int(step.exit_layer[i])
            r.tokens.append(tok)
            r.exits.append(k)
            if r.first_token_at is None:
                r.first_token_at = done_at
            self.sink.record_sample(SampleStats(name, c.key.name, k, model.num_exits,
                                                bool(step.forced[i])))
            eos = tok == model.config.eos_token_id
            full = len(r.tokens) >= r.handle.max_tokens
            if not eos and r.handle.stream_tokens and not r.handle.done:
                r.handle.emit(CaptionEvent(r.index, token=token_info(model, tok, k)))
            finished.append(eos or full)
        if any(finished):
            for i, r in enumerate(c.rows):
                if finished[i]:
                    self._finish(r, model, c.key.name, done_at)
            self._drop(c, [not f for f in finished])

    def _shadow_rows(self, model: str, n: int) -> torch.Tensor | None:
        """Rows whose next token gets a shadow check: sampled at the model's rate, and only
        while no caption waits in the queue (checks run inline, so they cost its latency)."""
        rate = self.shadow.rate_for(model)
        if rate <= 0 or self.pending_rows:
            return None
        picked = torch.tensor([self.rng.random() < rate for _ in range(n)])  # (B,)
        return picked if bool(picked.any()) else None

    def _drop(self, c: CaptionCohort, keep: list[bool]) -> CaptionCohort | None:
        """Replace `c` in the running cohorts by its rows where `keep` (gone when none)."""
        kept = c.filter(keep)
        i = self.cohorts.index(c)
        if kept is None:
            del self.cohorts[i]
        else:
            self.cohorts[i] = kept
        return kept

    def _finish(self, r: CaptionRow, model: MultiExitCaptioner, policy: str, t: float) -> None:
        h = r.handle
        if h.done:
            return
        eos = model.config.eos_token_id
        ids = [x for x in r.tokens if x != eos]
        infos = [token_info(model, x, k) for x, k in zip(r.tokens, r.exits, strict=True)
                 if x != eos]
        first = (r.first_token_at or t)
        n = len(r.tokens)
        per_token = (t - first) / (n - 1) if n > 1 else t - r.started
        exits = r.exits or [model.num_exits]
        result = CaptionResult(
            caption=caption_text(model, ids),
            tokens=infos, mean_exit_layer=round(sum(exits) / len(exits), 4),
            num_layers=model.num_exits,
            time_to_first_token_ms=round((first - h.arrival) * 1e3, 3),
            per_token_ms=round(per_token * 1e3, 3),
            queue_ms=round((r.started - h.arrival) * 1e3, 3),
            total_ms=round((t - h.arrival) * 1e3, 3))
        self.sink.record_caption(CaptionStats(h.served.name, policy, n, first - h.arrival,
                                              per_token))
        h.complete(CaptionEvent(r.index, result=result))

    def _observe(self, served: ServedModel, step: TokenStep) -> None:
        """Every decoder layer step measured feeds the model's step-cost tracker."""
        for k, (s, n) in enumerate(zip(step.layer_seconds, step.layer_rows, strict=True), 1):
            self.sink.record_iteration(IterationStats(served.name, n, k, s))
            served.step_cost.update(s, n)
