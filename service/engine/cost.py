"""One step-cost tracker for every task: how long one more step takes, as a function of rows.

    update(seconds, rows)  after every measured step (text: one round of the loop; captions: one
                           decoder layer of a token), rows = rows in that step
    estimate(rows)         what the next step of `rows` rows will take: a high quantile
                           (`quantile`, default 0.99) of the last `window` steps of that size

Steps are kept per size bucket (rows rounded up to a power of two: 1, 2, 3-4, 5-8, ...), so the
estimate follows the batch size and the load of the moment instead of one stale average; a
quantile of a short window, not a mean, so one slow step (another process took the core) moves
it for a while and then leaves it, and a budget row continues only when the next step fits
its budget `quantile` of the time. A bucket not measured yet borrows from the nearest measured
smaller bucket, scaled up linearly by rows (an upper bound: a layer costs less than linearly
more per row), else from the nearest larger one, else the seed (the manifest's batch-1 profile).
Latency budgets use `estimate`: a row leaves at the deepest exit after which one more step still
fits its budget.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Bucket:
    """The recent steps of one size bucket."""

    window: int
    recent: deque[float] = field(default_factory=deque)  # seconds, newest last
    rows: float = 0.0  # exponentially weighted mean rows of the steps measured here
    _sorted: list[float] | None = None  # `recent` sorted (cached until the next step)

    def update(self, seconds: float, rows: int, alpha: float) -> None:
        self.recent.append(seconds)
        if len(self.recent) > self.window:
            self.recent.popleft()
        self.rows = float(rows) if self.rows == 0 else (1 - alpha) * self.rows + alpha * rows
        self._sorted = None

    def quantile(self, q: float) -> float:
        """The `q` quantile of the recent steps (nearest rank, rounded up: a high estimate)."""
        if self._sorted is None:
            self._sorted = sorted(self.recent)
        xs = self._sorted
        return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]


def bucket_of(rows: int) -> int:
    """0 for 1 row, 1 for 2, 2 for 3-4, 3 for 5-8, ... (rows rounded up to a power of two)."""
    return max(0, rows - 1).bit_length()


@dataclass
class StepCost:
    """Online step-time estimate (see the module docstring). `seconds` is the overall mean of
    every step (what /v1/models shows as live_step_ms); `estimate(rows)` is what budgets and
    admission use."""

    seconds: float  # seeded from the manifest, then the EWMA of all steps
    alpha: float = 0.2
    observed: int = 0
    quantile: float = 0.99  # of the recent steps of a size, in `estimate`
    window: int = 100  # recent steps kept per size bucket
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def update(self, measured_s: float, rows: int | None = None) -> None:
        self.seconds = measured_s if self.observed == 0 else (
            (1 - self.alpha) * self.seconds + self.alpha * measured_s)
        self.observed += 1
        if rows is None or rows <= 0:
            return
        b = self.buckets.setdefault(bucket_of(rows), Bucket(self.window))
        b.update(measured_s, rows, self.alpha)

    def estimate(self, rows: int) -> float:
        """Seconds the next step of `rows` rows is expected to take (a high estimate)."""
        rows = max(1, rows)
        if not self.buckets:
            return self.seconds
        want = bucket_of(rows)
        below = [k for k in self.buckets if k <= want]
        if below:
            b = self.buckets[max(below)]
            scale = max(1.0, rows / b.rows)
        else:
            b = self.buckets[min(self.buckets)]
            scale = 1.0
        return b.quantile(self.quantile) * scale
