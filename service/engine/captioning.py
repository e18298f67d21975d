"""Captioning as a task adapter on the engine loop (service/engine/loop.py): free-running
decoding with a per-token early exit, on its own worker thread.

    decode_token: one token for every row of a CaptionState, layer by layer. After each decoder
                  layer the policy decides per row; exited rows take their token, leave the token
                  batch and get their skipped layers' K/V by state propagation (CALM); the last
                  layer always fires; a per-token latency budget forces an exit when one more
                  layer would not fit (the step-cost estimate, service/engine/cost.py).
    CaptionRunner: the task adapter; token-level continuous batching. Queued images are
                  encoded and join a cohort (one per model and policy) between tokens;
                  finished captions (EOS, max_tokens) leave; each token is streamed to its
                  request as soon as it is decided.

The model never sees the policy and the policy never sees the model (models/captioner.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from models.captioner import CaptionState, MultiExitCaptioner, TokenBatch
from policies import ExitPolicy
from policies.base import decide
from service.engine.config import ShadowConfig
from service.engine.cost import StepCost
from service.engine.handles import Handle, PolicyKey, now
from service.engine.loop import EngineLoop, RowGauges
from service.engine.served import ServedModel
from service.protocol import (
    CaptionEvent,
    CaptionResult,
    DeadlineExceeded,
    EngineError,
    InternalError,
    TokenInfo,
)
from service.stats import CaptionStats, IterationStats, SampleStats, ShadowCheckStats, StatsSink

log = logging.getLogger("eeserve.engine")


# ---- one token --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenStep:
    """What one decoding step decided for every row of the state."""

    tokens: torch.Tensor  # (B,) token ids
    exit_layer: torch.Tensor  # (B,) long, 1-based
    forced: torch.Tensor  # (B,) bool: the latency budget, not the policy, made it exit
    propagated: int  # skipped-layer K/V projections computed (state propagation)
    layer_seconds: list[float]  # wall time of each decoder layer step run
    layer_rows: list[int]  # rows in each of those steps
    propagate_seconds: float  # wall time of state propagation
    checks: list[tuple[int, bool]] = field(default_factory=list)  # shadow: (exit, agreed)


def shadow_token_checks(model: MultiExitCaptioner, ex: TokenBatch, early: torch.Tensor,
                        check: torch.Tensor) -> list[tuple[int, bool]]:
    """Per-token shadow check: the rows of `ex` (just exited at layer `ex.layer`) where `check`
    run on to the last layer; (exit, agreed) per checked row, agreed when the last layer's token
    equals the early one. Call before `model.propagate(ex)`: these steps write the real K/V of
    the skipped layers, and propagation then overwrites them, so the state is as without it."""
    if not bool(check.any()) or ex.layer >= model.num_exits:
        return []
    tb = ex.filter(check)
    logits = None
    for j in range(ex.layer + 1, model.num_exits + 1):
        out = model.step(tb, j)
        tb, logits = out.batch, out.logits  # type: ignore[assignment]
    assert logits is not None
    final = logits.float().argmax(dim=-1).cpu()  # (c,)
    agreed = (final == early[check.cpu()].cpu()).tolist()
    return [(ex.layer, bool(a)) for a in agreed]


def decode_token(model: MultiExitCaptioner, state: CaptionState, policy: ExitPolicy,
                 budget_s: torch.Tensor | None = None, layer_cost_s: float | StepCost = 0.0,
                 shadow: torch.Tensor | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> TokenStep:
    """Decide the next token of every row (see module docstring); advances `state` in place.
    `budget_s` (B,): per-token budgets; a row leaves after layer k when the time spent on this
    token plus one more layer (`layer_cost_s`: a fixed time, or the step-cost tracker's estimate
    for the rows still decoding) would pass it. `shadow` (B,) bool: rows whose token, if it
    exits early, is checked against the last layer (`shadow_token_checks`)."""
    b, L = len(state), model.num_exits
    tokens = torch.empty(b, dtype=torch.long, device=state.pos.device)
    exit_layer = torch.zeros(b, dtype=torch.long)
    forced = torch.zeros(b, dtype=torch.bool)
    start = clock()
    tb = model.embed(state)
    pstate = policy.init_state(b, "cpu")
    secs, rows, prop_s, propagated = [], [], 0.0, 0
    checks: list[tuple[int, bool]] = []
    for k in range(1, L + 1):
        t0 = clock()
        out = model.step(tb, k)
        tb = out.batch  # type: ignore[assignment]
        logits = out.logits.float().cpu()  # (b', V')
        secs.append(clock() - t0)
        rows.append(len(tb))
        late = None
        if budget_s is not None and k < L:
            spent = clock() - start
            late = (spent + _layer_estimate(layer_cost_s, len(tb))) > \
                budget_s[tb.rows.cpu()]  # (b',)
        v = decide(policy, pstate, k, logits, L, late)
        d, mask = v.decision, v.exit_mask
        if late is not None:
            forced[tb.rows.cpu()[v.forced]] = True
        if bool(mask.any()):
            ex = tb.filter(mask)
            tokens[ex.rows] = model.token_ids(d.prediction[mask])
            exit_layer[ex.rows.cpu()] = k
            if shadow is not None and k < L:  # [shadow] before propagation overwrites K/V
                checks += shadow_token_checks(model, ex, d.prediction[mask],
                                              shadow[ex.rows.cpu()])
            t1 = clock()
            propagated += model.propagate(ex)
            prop_s += clock() - t1
            tb = tb.filter(~mask)
            pstate = d.state.filter(~mask)
        else:
            pstate = d.state
        if len(tb) == 0:
            break
    model.advance(state, tokens)
    return TokenStep(tokens.cpu(), exit_layer, forced, propagated, secs, rows, prop_s, checks)


def _layer_estimate(cost: float | StepCost, rows: int) -> float:
    return cost.estimate(rows) if isinstance(cost, StepCost) else cost


# ---- requests -----------------------------------------------------------------------------------
@dataclass(eq=False, kw_only=True)
class CaptionHandle(Handle):
    """One caption request: its images, where its events go, and its per-image progress."""

    served: ServedModel
    pixels: torch.Tensor  # (n, 3, S, S) preprocessed images
    max_tokens: int
    events: asyncio.Queue[CaptionEvent | EngineError]
    stream_tokens: bool = False  # emit an event per token (streaming answers)
    remaining: int = 0
    admitted_at: float = 0.0

    def __post_init__(self) -> None:
        self.remaining = int(self.pixels.shape[0])

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])

    def emit(self, ev: CaptionEvent | EngineError) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ev)

    def complete(self, ev: CaptionEvent) -> None:
        """One image's caption is final; the request is done after its last image."""
        self.emit(ev)
        self.remaining -= 1
        if self.remaining == 0:
            self.done = True

    def _deliver_error(self, error: EngineError) -> None:
        self.emit(error)


@dataclass
class CaptionRow:
    handle: CaptionHandle
    index: int  # image index within the request
    started: float  # admission time (before image encoding)
    tokens: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    first_token_at: float | None = None


@dataclass
class CaptionCohort:
    """A batch object: captions of one model and policy decoded together, one token a step;
    `state` and `rows` are row-aligned. Built by `start`, `filter` and `concatenate` only."""

    served: ServedModel
    key: PolicyKey
    policy: ExitPolicy
    state: CaptionState
    rows: list[CaptionRow]

    @classmethod
    def start(cls, h: CaptionHandle, state: CaptionState, t: float) -> CaptionCohort:
        """A request's images, encoded (`state`), as a cohort admitted at `t`."""
        return cls(h.served, h.policy, h.policy_obj, state,
                   [CaptionRow(h, i, t) for i in range(h.size)])

    @classmethod
    def concatenate(cls, cohorts: list[CaptionCohort]) -> CaptionCohort:
        """Cohorts of one model and policy as one (new captions join between tokens)."""
        if len(cohorts) == 1:
            return cohorts[0]
        first = cohorts[0]
        return cls(first.served, first.key, first.policy,
                   CaptionState.concatenate([c.state for c in cohorts]),
                   [r for c in cohorts for r in c.rows])

    def filter(self, keep: list[bool]) -> CaptionCohort | None:
        """The rows where `keep` is true (None when none are)."""
        if all(keep):
            return self
        if not any(keep):
            return None
        return CaptionCohort(self.served, self.key, self.policy,
                             self.state.filter(torch.tensor(keep, dtype=torch.bool)),
                             [r for r, k in zip(self.rows, keep, strict=True) if k])

    def __len__(self) -> int:
        return len(self.rows)


class CaptionRunner(EngineLoop[CaptionHandle, CaptionHandle]):
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
                r.handle.emit(CaptionEvent(r.index, token=_token_info(model, tok, k)))
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
        infos = [_token_info(model, x, k) for x, k in zip(r.tokens, r.exits, strict=True)
                 if x != eos]
        first = (r.first_token_at or t)
        n = len(r.tokens)
        per_token = (t - first) / (n - 1) if n > 1 else t - r.started
        exits = r.exits or [model.num_exits]
        result = CaptionResult(
            caption=_text(model, ids),
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


@torch.inference_mode()
def warm_up(model: MultiExitCaptioner) -> None:
    """One token through every layer on a blank image (first-call allocations, lazy caches)."""
    size = model.config.image.size
    state = model.encode_images(torch.zeros(1, 3, size, size), capacity=2)
    tb = model.embed(state)
    for k in range(1, model.num_exits + 1):
        tb = model.step(tb, k).batch  # type: ignore[assignment]


def _text(model: MultiExitCaptioner, ids: list[int]) -> str:
    return str(model.tokenizer.decode(ids, skip_special_tokens=True)).strip()


def _token_info(model: MultiExitCaptioner, token: int, layer: int) -> TokenInfo:
    return TokenInfo(text=str(model.tokenizer.decode([token])), token_id=token, exit_layer=layer)
