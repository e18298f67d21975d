"""Live agreement of one served model: windows of shadow checks, promises, alarm, retuning.

`LiveAgreement.record` is called on the worker thread for every shadow check (cheap: a deque
append). `refresh` -- called by the shadow runner only while the engine is idle -- recomputes the
bounds of the windows that changed (policies/agreement.py), publishes them as metrics and, with
`adapt`, moves thresholds one guarded step. `snapshot` (any thread) is what /v1/models shows.

What is tracked: per policy key (name + request params) and exit k, the latest `window` checks
of rows answered at k, plus an "all" window over every checked row. The promise of each key
comes from the *calibrated* parameters of its policy name replayed on the artifact's cached
validation logits (policies.agreement.promise_from_validation), so a request that loosens the
thresholds is held to the calibration's promise.

The drift alarm of a key fires when its overall window ("all") is proven below its promise (the
verdict "broken") and stays up until reset (`reset`, POST /v1/models/NAME/retuning/reset): a
warning log line "drift alarm", the gauge `eeserve_drift_alarm`, and `alarm` in /v1/models.
Its reaction is `on_alarm`: none, retune (guarded retuning, as `adapt`) or fallback (every early
exit of the key moves to the fallback point, `fallback_keep` of its validation exits, at once).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from models.artifact import load_exit_logits
from policies import ExitPolicy, PolicyError, build_policy
from policies.agreement import (
    AlarmConfig,
    Judgement,
    judge,
    promise_from_validation,
    retune_direction,
    step_threshold,
    validation_agreement,
)
from policies.costs import manifest_costs
from policies.replay import replay, trace
from service.engine.config import ShadowConfig
from service.engine.handles import PolicyKey
from service.stats import AgreementStats, AlarmStats, RetuneStats, StatsSink

log = logging.getLogger("eeserve.engine")

MAX_KEYS = 16  # policy keys tracked per model (request params make new keys)
HISTORY = 20  # retuning changes kept for /v1/models
DEFAULT_TOLERANCE = 0.005


@dataclass
class Window:
    """The latest checks (True = agreed) with a running count."""

    size: int
    bits: deque[bool] = field(default_factory=deque)
    agree: int = 0
    dirty: bool = False

    def add(self, agreed: bool) -> None:
        if len(self.bits) == self.size:
            self.agree -= self.bits.popleft()
        self.bits.append(agreed)
        self.agree += agreed
        self.dirty = True

    def clear(self) -> None:
        self.bits.clear()
        self.agree = 0
        self.dirty = True


@dataclass
class AlarmState:
    """The drift alarm of one policy key: up from the first proof that its overall agreement
    is below the promise until a reset (latched: thin evidence later does not lower it)."""

    firing: bool = False
    fired: int = 0  # times it fired
    since: float | None = None  # time.time() when it last fired
    checks: int | None = None  # checks in the window that fired it
    agreement_upper: float | None = None
    promise: float | None = None
    fallback: bool = False  # the fallback point is in force

    def as_json(self, reaction: str) -> dict[str, Any]:
        return {"firing": self.firing, "fired": self.fired, "reaction": reaction,
                "since": None if self.since is None else time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
                "checks": self.checks, "agreement_upper": self.agreement_upper,
                "promise": self.promise, "fallback": self.fallback}


@dataclass
class Tracked:
    """One policy key: its windows, promises, last judgements and retuning state."""

    label: str  # metric label
    key: PolicyKey
    policy: ExitPolicy
    windows: dict[str, Window]  # "1".."K", "all"
    promises: list[float] | None = None  # per exit 1..K (computed on the idle path)
    promise_all: float = 1.0
    judged: dict[str, Judgement] = field(default_factory=dict)
    start: list[float | None] | None = None  # thresholds when first seen (the floor)
    val_scores: torch.Tensor | None = None  # (N, K) validation scores, for retuning steps
    changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    budget_shift: float | None = None
    alarm: AlarmState = field(default_factory=AlarmState)


def fallback_threshold(val_scores: torch.Tensor | None, current: float | None,
                       keep: float) -> float | None:
    """An exit's threshold at the fallback point: `keep` of the validation rows that pass
    `current` still pass (one raise of step 1 - keep); 0 (or no scores) = never exit there."""
    if keep <= 0.0 or val_scores is None:
        return None
    return step_threshold(val_scores, current, current, "raise", 1.0 - keep)


def policy_label(key: PolicyKey) -> str:
    """The policy name, or name~hash for keys with request params (bounded cardinality)."""
    if not key.params:
        return key.name
    return f"{key.name}~{hashlib.sha1(repr(key.params).encode()).hexdigest()[:6]}"


class LiveAgreement:
    def __init__(self, model: str, num_exits: int, loaded: Any, cfg: ShadowConfig,
                 sink: StatsSink):
        self.model = model
        self.num_exits = num_exits
        self.loaded = loaded  # models.loading.LoadedModel (manifest, path)
        self.cfg = cfg
        self.alarm = AlarmConfig(confidence=cfg.confidence, min_support=cfg.min_support,
                                 step=cfg.adapt_step).validate()
        self.sink = sink
        self.keys: dict[PolicyKey, Tracked] = {}
        self.dropped: dict[str, int] = {}
        self._val: torch.Tensor | None | bool = False  # (N, K, C) once loaded; None: missing
        self._lock = threading.Lock()  # windows, judgements, history (read by snapshot)
        self._tune = threading.Lock()  # threshold changes: worker's refresh vs a reset

    # ---- worker thread ----------------------------------------------------------------------
    def record(self, key: PolicyKey, policy: ExitPolicy, exit_layer: int, agreed: bool) -> None:
        if self.cfg.role == "follower":  # the judge process keeps the windows of all traffic
            forward = getattr(self.sink, "forward_observation", None)
            if forward is not None:
                forward((self.model, (key.name, key.params), exit_layer, agreed))
                return
        t = self.keys.get(key)
        if t is None:
            if len(self.keys) >= MAX_KEYS:
                return
            t = self._track(key, policy)
        elif t.policy is not policy:  # rebuilt after leaving the model's policy cache
            t.policy, t.start, t.val_scores = policy, None, None
        with self._lock:
            t.windows[str(exit_layer)].add(agreed)
            t.windows["all"].add(agreed)

    def note_dropped(self, reason: str, rows: int) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + rows

    def mark_clean(self) -> None:
        """Forget pending judgements (after a failure, so the idle loop does not spin)."""
        with self._lock:
            for t in self.keys.values():
                for w in t.windows.values():
                    w.dirty = False

    def dirty(self) -> bool:
        return any(w.dirty for t in self.keys.values() for w in t.windows.values())

    def refresh(self, limit: int | None = None) -> None:
        """Judge (at most `limit`) windows that changed, publish them, and retune when `adapt`
        is on and a key has no window left to judge."""
        with self._tune:
            self._refresh(limit)

    def _refresh(self, limit: int | None) -> None:
        for key, t in list(self.keys.items()):
            if t.promises is None:
                t.promises, t.promise_all = self._promises(key)
            for name, w in t.windows.items():
                if not w.dirty:
                    continue
                if limit is not None:
                    if limit <= 0:
                        return
                    limit -= 1
                w.dirty = False
                promise = t.promise_all if name == "all" else t.promises[int(name) - 1]
                j = judge(w.agree, len(w.bits), promise, self.alarm)
                with self._lock:
                    t.judged[name] = j
                if name == "all":
                    self._alarm(t, j)
                set_agreement = getattr(self.sink, "set_agreement", None)
                if set_agreement is not None and j.n:
                    set_agreement(AgreementStats(self.model, t.label, name, j.lower, j.upper,
                                                 j.promise, j.n))
            if t.alarm.fallback and t.start is None:  # the policy was rebuilt: again
                self._fall_back(t)
            if self.cfg.retunes and not any(w.dirty for w in t.windows.values()):
                self._retune(key, t)

    def reset(self) -> int:
        """Put every retuned threshold back where it started; returns the exits changed."""
        with self._tune:
            return self._reset()

    def _reset(self) -> int:
        changed = 0
        for t in list(self.keys.values()):
            self._clear_alarm(t)
            if t.start is None:
                continue
            thresholds = t.policy.thresholds  # type: ignore[attr-defined]
            for i, (now_t, start) in enumerate(zip(thresholds, t.start, strict=True)):
                if now_t != start:
                    thresholds[i] = start
                    changed += 1
                    self._log_change(t, i + 1, "reset", start)
                    with self._lock:
                        t.windows[str(i + 1)].clear()
                        t.windows["all"].clear()
        return changed

    # ---- the drift alarm ----------------------------------------------------------------------
    def _alarm(self, t: Tracked, j: Judgement) -> None:
        """Raise the key's alarm on a broken overall promise (once; it stays up) and react."""
        if t.alarm.firing or j.verdict != "broken":
            return
        reaction = self.cfg.on_alarm
        with self._lock:
            a = t.alarm
            a.firing, a.fired, a.since, a.checks = True, a.fired + 1, time.time(), j.n
            a.agreement_upper, a.promise = _r(j.upper), _r(j.promise)
        log.warning("drift alarm", extra={
            "model": self.model, "policy": t.label, "checks": j.n,
            "agreement": round(j.agree / j.n, 6), "agreement_upper": _r(j.upper),
            "promise": _r(j.promise), "reaction": reaction})
        self._publish_alarm(t, reaction)
        if reaction == "fallback":
            self._fall_back(t)

    def _fall_back(self, t: Tracked) -> None:
        """Move every early exit of `t` to the fallback point (thresholds kept for a reset)."""
        thresholds = getattr(t.policy, "thresholds", None)
        if not isinstance(thresholds, list) or len(thresholds) != self.num_exits:
            return  # patience, static, none: no operating point to move
        keep = self.cfg.fallback_keep
        scores = self._scores(t) if keep > 0 else None
        if t.start is None:
            t.start = list(thresholds)
        for k in range(1, self.num_exits):
            cur = thresholds[k - 1]
            nxt = fallback_threshold(None if scores is None else scores[:, k - 1], cur, keep)
            if nxt != cur:
                self._move(t, thresholds, k, "fallback", nxt)
        with self._lock:
            t.alarm.fallback = True

    def _clear_alarm(self, t: Tracked) -> None:
        if not t.alarm.firing:
            return
        with self._lock:
            t.alarm.firing = t.alarm.fallback = False
        log.info("drift alarm reset", extra={"model": self.model, "policy": t.label})
        self._publish_alarm(t, self.cfg.on_alarm)

    def _publish_alarm(self, t: Tracked, reaction: str) -> None:
        set_alarm = getattr(self.sink, "set_alarm", None)
        if set_alarm is not None:
            set_alarm(AlarmStats(self.model, t.label, t.alarm.firing, reaction))

    # ---- any thread --------------------------------------------------------------------------
    def alarm_of(self, key: PolicyKey) -> AlarmState | None:
        """A copy of the key's alarm state (None: not tracked)."""
        with self._lock:
            t = self.keys.get(key)
            return None if t is None else replace(t.alarm)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            for key, t in self.keys.items():
                exits = {name: _judgement_json(j) for name, j in sorted(t.judged.items())
                         if name != "all"}
                entry: dict[str, Any] = {
                    "params": dict(key.params) or None,
                    "all": _judgement_json(t.judged["all"]) if "all" in t.judged else None,
                    "exits": exits,
                    "alarm": t.alarm.as_json(self.cfg.on_alarm),
                }
                if t.start is not None:
                    entry["retuning"] = {
                        "thresholds": list(t.policy.thresholds),  # type: ignore[attr-defined]
                        "started_at": list(t.start), "changes": list(t.changes),
                        "budget_shift": t.budget_shift}
                out[t.label] = entry
            return {"shadow_rate": self.cfg.rate_for(self.model), "adapt": self.cfg.retunes,
                    "on_alarm": self.cfg.on_alarm, "fallback_keep": self.cfg.fallback_keep,
                    "alarms": sorted(t.label for t in self.keys.values() if t.alarm.firing),
                    "confidence": self.alarm.confidence, "min_support": self.alarm.min_support,
                    "window": self.cfg.window,
                    "promise": "validation agreement of the calibrated parameters (per exit, "
                               "or pooled below 30 rows) minus the calibration tolerance",
                    "policies": out, "dropped": dict(self.dropped)}

    # ---- internals ---------------------------------------------------------------------------
    def _val_logits(self) -> torch.Tensor | None:
        if self._val is False:
            try:
                self._val = load_exit_logits(self.loaded.path, "val").logits.float()
            except Exception as e:  # noqa: BLE001 -- no cached logits: promises from tolerance
                log.warning("no validation logits for live agreement",
                            extra={"model": self.model, "error": str(e)})
                self._val = None
        return self._val if isinstance(self._val, torch.Tensor) else None

    def _calibration(self, name: str) -> dict[str, Any] | None:
        return (self.loaded.manifest.get("policies") or {}).get(name)

    def _track(self, key: PolicyKey, policy: ExitPolicy) -> Tracked:
        """Start tracking a key (live path: no I/O here; promises come in `refresh`)."""
        windows = {str(k): Window(self.cfg.window) for k in range(1, self.num_exits + 1)}
        windows["all"] = Window(self.cfg.window)
        t = Tracked(policy_label(key), key, policy, windows)
        self.keys[key] = t
        return t

    def _promises(self, key: PolicyKey) -> tuple[list[float], float]:
        """Per-exit and overall promises: the calibrated parameters of the key's policy name
        replayed on the cached validation logits (or 1 - tolerance without them)."""
        cal = self._calibration(key.name)
        tol = float(((cal or {}).get("fit") or {}).get("tolerance", DEFAULT_TOLERANCE))
        promises, promise_all = [1.0 - tol] * self.num_exits, 1.0 - tol
        promises[-1] = 1.0
        val = self._val_logits()
        if val is not None:
            try:
                ref = build_policy(key.name, self.num_exits, {}, cal)
                r = replay(ref, val)
                promises, promise_all = promise_from_validation(
                    validation_agreement(r.exit_layer, r.prediction, r.final_prediction,
                                         self.num_exits), tol, min_support=30)
            except PolicyError as e:
                log.warning("promise from tolerance only", extra={"model": self.model,
                                                                  "error": str(e)})
        return promises, promise_all

    def _retune(self, key: PolicyKey, t: Tracked) -> None:
        thresholds = getattr(t.policy, "thresholds", None)
        if not isinstance(thresholds, list) or len(thresholds) != self.num_exits:
            return  # patience, static, none: nothing to retune
        if t.start is None:
            t.start = list(thresholds)
        for k in range(1, self.num_exits):
            j = t.judged.get(str(k))
            if j is None or t.windows[str(k)].dirty:
                continue
            cur, start = thresholds[k - 1], t.start[k - 1]
            above = start is not None and (cur is None or cur > start)
            d = retune_direction(j, self.alarm, above)
            if d == "hold":
                continue
            scores = self._scores(t)
            if scores is None:
                return
            nxt = step_threshold(scores[:, k - 1], cur, start, d, self.alarm.step)
            if nxt != cur:
                self._move(t, thresholds, k, d, nxt, j)

    def _move(self, t: Tracked, thresholds: list[float | None], k: int, direction: str,
              value: float | None, j: Judgement | None = None) -> None:
        """Set exit k's threshold to `value`: its window and the overall one start again (the
        old checks describe the old threshold), and the change is logged and forwarded."""
        thresholds[k - 1] = value
        with self._lock:
            t.windows[str(k)].clear()
            t.windows["all"].clear()
        self._log_change(t, k, direction, value, j)

    def _scores(self, t: Tracked) -> torch.Tensor | None:
        if t.val_scores is None:
            val = self._val_logits()
            if val is None:
                return None
            t.val_scores = trace(t.policy, val).scores  # (N, K)
        return t.val_scores

    def _log_change(self, t: Tracked, k: int, direction: str, value: float | None,
                    j: Judgement | None = None) -> None:
        t.budget_shift = self._budget_shift(t)
        change = {"exit": k, "direction": direction, "threshold": value,
                  "checks": j.n if j else None, "agreement_upper": _r(j.upper) if j else None,
                  "agreement_lower": _r(j.lower) if j else None,
                  "promise": _r(j.promise) if j else None, "budget_shift": t.budget_shift}
        with self._lock:
            t.changes.append(change)
        log.info("threshold retuned", extra={"model": self.model, "policy": t.label, **change})
        record = getattr(self.sink, "record_retune", None)
        if record is not None:
            record(RetuneStats(self.model, t.label, k, direction, value, t.budget_shift))
        forward = getattr(self.sink, "forward_threshold", None)
        if self.cfg.role == "judge" and forward is not None:  # one decision, every process
            forward((self.model, (t.key.name, t.key.params), k, value))

    def apply_threshold(self, policy: ExitPolicy, k: int, value: float | None) -> None:
        """A follower: take the judge's threshold for exit `k` (any thread)."""
        thresholds = getattr(policy, "thresholds", None)
        if isinstance(thresholds, list) and 1 <= k <= len(thresholds):
            with self._tune:
                thresholds[k - 1] = value

    def _budget_shift(self, t: Tracked) -> float | None:
        """EENet: validation mean cost (fraction of full depth) now minus at the start."""
        val = self._val_logits()
        if t.policy.name != "eenet" or val is None or t.start is None:
            return None
        costs = manifest_costs(self.loaded.manifest, self.num_exits)
        now_cost = replay(t.policy, val, costs=costs).mean_cost()
        thresholds = t.policy.thresholds  # type: ignore[attr-defined]
        current = list(thresholds)
        thresholds[:] = t.start
        try:
            start_cost = replay(t.policy, val, costs=costs).mean_cost()
        finally:
            thresholds[:] = current
        return round((now_cost - start_cost) / costs.full, 6)


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def _judgement_json(j: Judgement) -> dict[str, Any]:
    return {"checks": j.n, "agreement": round(j.agree / j.n, 6) if j.n else None,
            "lower": _r(j.lower), "upper": _r(j.upper), "promise": _r(j.promise),
            "verdict": j.verdict}
