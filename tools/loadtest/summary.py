"""Turn a list of `RequestOutcome`s into a `RunSummary` (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from tools.loadtest.records import LatencyStats, LoadSpec, RequestOutcome, RunSummary


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(latencies_ms: Sequence[float]) -> LatencyStats:
    if not latencies_ms:
        return LatencyStats()
    return LatencyStats(mean=sum(latencies_ms) / len(latencies_ms),
                        p50=percentile(latencies_ms, 50), p90=percentile(latencies_ms, 90),
                        p95=percentile(latencies_ms, 95), p99=percentile(latencies_ms, 99),
                        max=max(latencies_ms))


def _duration(outcomes: Sequence[RequestOutcome]) -> float:
    if not outcomes:
        return 0.0
    first = min(o.start_s for o in outcomes)
    last = max(o.start_s + o.latency_s for o in outcomes)
    return max(last - first, 1e-9)


def summarize(policy: str, load: LoadSpec, outcomes: Sequence[RequestOutcome],
              slo_ms: float | None = None) -> RunSummary:
    """Summarise one run. Throughput and goodput count 200 answers over the run's wall time."""
    ok = [o for o in outcomes if o.ok]
    lat_ms = [o.latency_s * 1000.0 for o in ok]
    met = len(ok) if slo_ms is None else sum(1 for x in lat_ms if x <= slo_ms)
    samples = [s for o in ok for s in o.samples]
    labelled = [s for s in samples if s.correct is not None]
    hist = Counter(int(round(s.exit_layer)) for s in samples)
    duration = _duration(outcomes)
    per_s = (lambda n: n / duration) if outcomes else (lambda n: 0.0)
    server_total = [o.server_total_ms for o in ok if o.server_total_ms is not None]
    server_queue = [o.server_queue_ms for o in ok if o.server_queue_ms is not None]
    num_layers = max((s.num_layers for s in samples), default=None)
    return RunSummary(
        policy=policy, mode=load.mode, level=load.level, requests=len(outcomes), ok=len(ok),
        samples=len(samples), duration_s=duration if outcomes else 0.0,
        throughput_rps=per_s(len(ok)), samples_per_s=per_s(len(samples)),
        goodput_rps=per_s(met), slo_ms=slo_ms, slo_met=met, latency_ms=latency_stats(lat_ms),
        errors=dict(sorted(Counter(o.status for o in outcomes if not o.ok).items())),
        error_codes=dict(sorted(Counter(o.error_code for o in outcomes
                                        if not o.ok and o.error_code).items())),
        accuracy=(sum(1 for s in labelled if s.correct) / len(labelled)) if labelled else None,
        labelled=len(labelled), exit_histogram=dict(sorted(hist.items())),
        mean_exit_layer=(sum(s.exit_layer for s in samples) / len(samples)) if samples else None,
        num_layers=num_layers, budget_forced=sum(1 for s in samples if s.budget_forced),
        server_total_ms_p50=percentile(server_total, 50),
        server_queue_ms_p50=percentile(server_queue, 50),
        extra=_caption_extra(ok))


def _caption_extra(ok: Sequence[RequestOutcome]) -> dict[str, float]:
    tokens = [s.tokens for o in ok for s in o.samples if s.tokens]
    if not tokens:
        return {}
    return {"mean_tokens_per_caption": sum(tokens) / len(tokens)}
