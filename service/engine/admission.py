"""Deadline-aware admission: refuse at once a request that would wait past its deadline.

A request accepted into a queue it cannot leave in time is wasted work twice over: it is
tokenised and queued, then answered 504 (or answered late, which its client has given up on),
and it holds the place of one that could have made it. So while the engine has a backlog, the
expected wait of a new request is estimated from the rows ahead of it and the rate at which the
engine has been answering rows lately; when that wait plus the usual compute time of a request
does not fit in the time the request has left (with some headroom) it is refused with 429
before any work is done.

The rate is only trusted while the engine has a backlog (at least a full batch waiting): with
an idle or lightly loaded engine the answered rows measure the arrivals, not the capacity, and
no request is refused. Event loop only (no locks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from service.protocol import Overloaded


@dataclass
class DeadlineAdmission:
    """Expected queue wait from the backlog and the measured drain rate (rows per second)."""

    backlog_rows: int  # rows waiting before the estimate is trusted (a full batch)
    window_s: float = 2.0  # answered rows counted over this long
    min_rows: int = 32  # answered rows in the window before the rate is trusted
    alpha: float = 0.1  # EMA weight of a request's compute time
    headroom: float = 0.8  # admit while the expected wait is within this share of the time left
    compute_s: float = 0.0  # EMA of the longest compute time of a request's rows
    _done: deque[tuple[float, int]] = field(default_factory=deque)
    _rows_in_window: int = 0

    def answered(self, t: float, rows: int, compute_s: float) -> None:
        """A request's `rows` were answered at `t`, after `compute_s` of compute."""
        self._done.append((t, rows))
        self._rows_in_window += rows
        self._expire(t)
        self.compute_s = compute_s if self.compute_s == 0.0 else \
            (1 - self.alpha) * self.compute_s + self.alpha * compute_s

    def rows_per_s(self, t: float) -> float | None:
        """Rows answered per second over the window, or None when too few to tell."""
        self._expire(t)
        if self._rows_in_window < self.min_rows or not self._done:
            return None
        span = max(t - self._done[0][0], 0.25)
        return self._rows_in_window / span

    def expected_wait_s(self, t: float, ahead: int, rows: int) -> float | None:
        """Seconds until `rows` more, behind `ahead` waiting rows, are answered; None when the
        engine has no backlog (or too little history) to tell."""
        if ahead < self.backlog_rows:
            return None
        rate = self.rows_per_s(t)
        if rate is None:
            return None
        return (ahead + rows) / rate + self.compute_s

    def check(self, t: float, ahead: int, rows: int, deadline_s: float) -> None:
        """Overloaded (429) when the expected wait does not fit in `headroom` x `deadline_s`
        (the time the request has left): the estimate misses event-loop and scheduling
        jitter, and an answer past the deadline is worth nothing."""
        wait = self.expected_wait_s(t, ahead, rows)
        if wait is not None and wait > self.headroom * deadline_s:
            raise Overloaded(f"expected wait of {wait * 1e3:.0f} ms for {ahead} queued texts is "
                             f"over the deadline of {deadline_s * 1e3:.0f} ms (deadline_ms); "
                             "retry later", retry_after_s=max(1.0, wait - deadline_s))

    def _expire(self, t: float) -> None:
        while self._done and t - self._done[0][0] > self.window_s:
            self._rows_in_window -= self._done.popleft()[1]
