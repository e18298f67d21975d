"""How fast the agreement alarm fires, and how often it fires falsely, on synthetic streams.

Bernoulli(p) check outcomes against a promise of 0.97, the alarm's rule (policies/agreement.py:
upper Clopper-Pearson bound < promise with >= 100 checks, confidence 0.95, window 2000) looked
at every 25 checks, as the server judges between idle steps. Per true agreement p: the median
and 90th percentile of checks until the first alarm over `--seeds` streams, and the share of
streams that fired within `--checks`. Writes docs/figures/alarm_power.json (`--json` elsewhere;
`--out` is the same flag).

    python -m bench.studies.alarm_power --seeds 40 --checks 4000
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import deque
from pathlib import Path

from bench.harness import ROOT, record
from policies.agreement import AlarmConfig, judge

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
PROMISE = 0.97


def first_alarm(p: float, seed: int, checks: int, cfg: AlarmConfig, window: int,
                every: int) -> int | None:
    rng = random.Random(seed)
    win: deque[bool] = deque(maxlen=window)
    agree = 0
    for i in range(1, checks + 1):
        if len(win) == window:
            agree -= win[0]
        ok = rng.random() < p
        win.append(ok)
        agree += ok
        if i % every == 0 and judge(agree, len(win), PROMISE, cfg).verdict == "broken":
            return i
    return None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.alarm_power",
                                 description=DESCRIPTION)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--checks", type=int, default=4000)
    ap.add_argument("--json", "--out", dest="json", type=Path,
                    default=ROOT / "docs/figures/alarm_power.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    cfg = AlarmConfig(confidence=0.95, min_support=100)
    rows = []
    for p in (0.99, 0.98, 0.97, 0.96, 0.95, 0.93, 0.90, 0.80):
        fired = [first_alarm(p, s, a.checks, cfg, 2000, 25) for s in range(a.seeds)]
        hits = sorted(f for f in fired if f is not None)
        row = {"true_agreement": p, "promise": PROMISE,
               "fired_share": round(len(hits) / a.seeds, 3),
               "median_checks_to_fire": statistics.median(hits) if hits else None,
               "p90_checks_to_fire": hits[int(0.9 * (len(hits) - 1))] if hits else None}
        print(row, flush=True)
        rows.append(row)
    record("studies.alarm_power", a.json, {"rows": rows, "seeds": a.seeds, "checks": a.checks,
                                           "confidence": 0.95, "min_support": 100,
                                           "window": 2000, "look_every": 25})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
