"""`EngineLoop`: the one scheduler loop every task runs on (schedule → run → update).

    schedule: wait for work; admit queued rows into the free part of `max_rows` (`_take`)
    run:      the task adapter steps its cohorts once (`_admit`, `_run_round`): text
              classification one layer per cohort (service/engine/text_task.py), captions one
              token per cohort (service/engine/caption_task.py)
    update:   inside the round, the adapter applies `policies.base.decide` per row, answers the
              rows that left and keeps the rest; the loop measures the round

Every loop has the same lifecycle, so shutdown treats them alike: `reserve` / `release` queue
room before any work (overload is refused early), `submit` a handle, `close` (no new requests),
`idle` (nothing queued, reserved or in flight), `drop_everything` (end of the grace period),
`stop` (the worker returns once idle). Gauges (`eeserve_queue_depth`, `eeserve_active_rows`) are
published by the worker only: at every schedule, after every round and when the loop comes to
rest, so they read 0 when idle (publishing from `submit` too, on the event loop, cost 8 % of
torch-eager throughput: docs/benchmarks/serving.md, "Engine frame").
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from service.engine.handles import Handle, now
from service.protocol import InternalError, NotReady, Overloaded
from service.stats import StatsSink

log = logging.getLogger("eeserve.engine")

H = TypeVar("H", bound=Handle)
A = TypeVar("A")  # what `_take` admits (text: row ranges of requests, captions: requests)


class RowGauges:
    """Queue depth and active rows summed over every loop of an engine, into the sink."""

    def __init__(self, sink: StatsSink):
        self.sink = sink
        self.lock = threading.Lock()
        self.parts: dict[int, tuple[int, int]] = {}  # id(loop) -> (queued, active)

    def publish(self, loop: object, queued: int, active: int) -> None:
        with self.lock:
            self.parts[id(loop)] = (queued, active)
            total_q = sum(q for q, _ in self.parts.values())
            total_a = sum(a for _, a in self.parts.values())
        self.sink.set_queue_depth(total_q)
        set_active = getattr(self.sink, "set_active_rows", None)
        if set_active is not None:
            set_active(total_a)


class EngineLoop(ABC, Generic[H, A]):
    """The worker-thread loop and the event-loop-side queue of one task (see module docstring).

    Subclasses are the task adapters: they say what is in flight (`in_flight`), how queued
    requests are admitted (`_take`, `_admit`) and what one round does (`_run_round`).
    """

    noun = "rows"  # what the queue holds, for error messages
    limit_setting = "queue_limit"  # the setting that bounds the queue, for error messages

    def __init__(self, max_rows: int, queue_limit: int, sink: StatsSink,
                 clock: Callable[[], float] = now, gauges: RowGauges | None = None):
        self.max_rows = max_rows
        self.queue_limit = queue_limit
        self.sink = sink
        self.clock = clock
        self.gauges = gauges or RowGauges(sink)
        self.cond = threading.Condition()
        self.pending: deque[H] = deque()
        self.pending_rows = 0
        self.reserved_rows = 0  # rows of requests being prepared, counted against the limit
        self.closed = False  # no new requests
        self.stopped = False  # the loop should end once idle (or at once when `abort`)
        self.abort = False

    # ---- task adapter ----------------------------------------------------------------------
    @abstractmethod
    def in_flight(self) -> Sequence[Handle]:
        """Handles with rows in the running cohorts (one entry per row)."""

    @abstractmethod
    def active_rows(self) -> int:
        """Rows in the running cohorts."""

    @abstractmethod
    def _take(self, free: int) -> list[A]:
        """Pop what to admit now from `pending` (lock held), at most `free` rows."""

    @abstractmethod
    def _admit(self, taken: list[A]) -> None:
        """Turn admitted requests into cohorts (worker thread, lock not held)."""

    @abstractmethod
    def _run_round(self) -> None:
        """Step every running cohort once and answer the rows that leave (worker thread)."""

    def _observe_round(self, seconds: float, rows: int) -> None:
        """A round of `rows` rows took `seconds` (admission included)."""

    def _has_idle_work(self) -> bool:
        """Work to do when no request is queued or running (lock held)."""
        return False

    def _idle_step(self) -> None:
        """One short piece of that idle work."""

    def _batching_window(self) -> None:
        """Idle engine, requests queued: optionally wait briefly for more (lock held)."""

    def _on_exit(self) -> None:
        """The loop returned (worker thread)."""

    # ---- called from the event loop ----------------------------------------------------------
    def reserve(self, rows: int) -> None:
        """Claim queue room before preparing a request, so overload is refused before work."""
        with self.cond:
            if self.closed:
                raise NotReady("server is shutting down; not accepting new requests")
            waiting = self.pending_rows + self.reserved_rows
            if waiting + rows > self.queue_limit:
                raise Overloaded(f"queue full: {waiting} {self.noun} waiting, limit "
                                 f"{self.queue_limit} ({self.limit_setting})", retry_after_s=1.0)
            self.reserved_rows += rows

    def release(self, rows: int) -> None:
        """Give back a reservation (the request failed before `submit`)."""
        with self.cond:
            self.reserved_rows -= rows

    def submit(self, h: H) -> None:
        """Queue a request whose rows were reserved (the reservation passes to the queue)."""
        with self.cond:  # accepted when its rows were reserved, even if closing since
            self.reserved_rows -= h.size
            if self.stopped or self.abort:
                raise NotReady("server is shutting down; not accepting new requests")
            self.pending.append(h)
            self.pending_rows += h.size
            self._note_arrival(h.arrival)
            self.cond.notify()

    def _note_arrival(self, t: float) -> None:
        """A request arrived at `t` (lock held)."""

    def close(self) -> None:
        """Accept no new requests; queued and running ones go on."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def stop(self) -> None:
        """End the worker loop once it is idle."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def idle(self) -> bool:
        """Nothing queued, in flight, or being prepared (reserved rows: accepted requests)."""
        with self.cond:
            return not self.pending and not self.active_rows() and self.reserved_rows <= 0

    def drop_everything(self, reason: str) -> None:
        """Fail every queued and running request (end of the shutdown grace period); the
        worker returns at its next schedule."""
        with self.cond:
            handles = list(self.pending) + list(self.in_flight())
            self.pending.clear()
            self.pending_rows = 0
            self.abort = True
            self.cond.notify_all()
        for h in _unique(handles):
            h.fail(NotReady(reason))

    # ---- the worker loop -------------------------------------------------------------------
    def run_forever(self) -> None:
        try:
            while self.run_once():
                pass
        finally:
            self._on_exit()
            self._publish()

    def run_once(self) -> bool:
        """One turn of the loop: schedule, admit, one round of steps (or one piece of idle
        work); False when the loop should end. Blocks while there is nothing to do."""
        taken = self._schedule()
        if taken is None:
            return False
        if not taken and not self.active_rows():
            self._idle_step()
            return True
        started = self.clock()
        self._admit(taken)
        rows = self.active_rows()
        self._run_round()
        self._observe_round(self.clock() - started, rows)
        self._publish()
        return True

    def _schedule(self) -> list[A] | None:
        """What to admit this round ([] for nothing), or None when the loop should end."""
        with self.cond:
            while not self.active_rows() and not self.pending:
                if self.stopped or self.abort:
                    return None
                if self._has_idle_work():
                    return []
                self.cond.wait(0.5)
            if self.abort:
                return None
            if not self.active_rows():
                self._batching_window()
            taken = self._take(self.max_rows - self.active_rows())
            queued, active = self.pending_rows, self.active_rows() + self._rows_of(taken)
        self.gauges.publish(self, queued, active)
        return taken

    def _rows_of(self, taken: list[A]) -> int:
        """Rows in what `_take` returned."""
        return len(taken)

    def _publish(self) -> None:
        self.gauges.publish(self, self.pending_rows, self.active_rows())

    def _fail(self, handles: Sequence[Handle], e: BaseException) -> None:
        """Fail these requests with an internal error (a step raised); logged once each."""
        for h in _unique(handles):
            log.error("step failed", extra={"request_id": h.request_id,
                                            "error": f"{type(e).__name__}: {e}"})
            h.fail(InternalError(f"internal error while running the model; quote request id "
                                 f"{h.request_id}"))


def _unique(handles: Sequence[Handle]) -> list[Handle]:
    seen: set[int] = set()
    out = []
    for h in handles:
        if id(h) not in seen:
            seen.add(id(h))
            out.append(h)
    return out
