"""One step-cost tracker for every task: how long one more step takes, as a function of rows.

    update(seconds, rows)  after every measured step (text: one round of the loop; captions: one
                           decoder layer of a token), rows = rows in that step
    estimate(rows)         what the next step of `rows` rows will take: the mean of recent steps
                           of that size plus `spread` times their mean absolute deviation

Steps are kept per size bucket (rows rounded up to a power of two: 1, 2, 3-4, 5-8, ...), each an
exponentially weighted mean, so the estimate follows the batch size and the load of the moment
instead of one stale average. A bucket not measured yet borrows from the nearest measured
smaller bucket, scaled up linearly by rows (an upper bound: a layer costs less than linearly
more per row), else from the nearest larger one, else the seed (the manifest's batch-1 profile).
Latency budgets use `estimate`: a row leaves at the deepest exit after which one more step still
fits its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Bucket:
    """Exponentially weighted statistics of the steps of one size bucket."""

    mean_s: float
    dev_s: float = 0.0  # mean absolute deviation from mean_s
    rows: float = 1.0  # mean rows of the steps measured here
    observed: int = 1

    def update(self, seconds: float, rows: int, alpha: float) -> None:
        self.dev_s = (1 - alpha) * self.dev_s + alpha * abs(seconds - self.mean_s)
        self.mean_s = (1 - alpha) * self.mean_s + alpha * seconds
        self.rows = (1 - alpha) * self.rows + alpha * rows
        self.observed += 1


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
    spread: float = 2.0  # deviations added to the mean in `estimate` (a high quantile)
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def update(self, measured_s: float, rows: int | None = None) -> None:
        self.seconds = measured_s if self.observed == 0 else (
            (1 - self.alpha) * self.seconds + self.alpha * measured_s)
        self.observed += 1
        if rows is None or rows <= 0:
            return
        b = self.buckets.get(bucket_of(rows))
        if b is None:
            self.buckets[bucket_of(rows)] = Bucket(measured_s, 0.0, float(rows))
        else:
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
        return (b.mean_s + self.spread * b.dev_s) * scale
