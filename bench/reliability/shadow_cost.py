"""Cost of shadow checks: closed-loop throughput and p99 over HTTP at several shadow rates.

For each round and each rate (order rotated every round, so the rates are interleaved), start
`eeserve serve ART` with EESERVE_SHADOW_RATE=rate, run `eeserve bench` (closed loop, `-c`
clients, `-n` requests of one test-split text each, default policy), read /metrics for the
shadow checks done and the shadow rows dropped, stop the server. Medians over rounds, and
throughput against the first rate, go to the record (`--json`, default
docs/figures/shadow_cost.json).

    python -m bench.reliability.shadow_cost artifacts/text-default --rates 0,0.01,0.1 \\
        --rounds 3 -n 300 -c 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, eeserve, record, running, scrape
from bench.reliability._common import serve_port, served_settings

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
LOGS = ROOT / "logs"


def shadow_counts(url: str) -> dict[str, float]:
    """Shadow checks, disagreements and dropped rows so far (summed over labels)."""
    out = {"checks": 0.0, "disagreements": 0.0, "dropped": 0.0}
    names = {"eeserve_shadow_checks_total": "checks",
             "eeserve_shadow_disagreements_total": "disagreements",
             "eeserve_shadow_dropped_total": "dropped"}
    for sample, value in scrape(url).items():
        key = names.get(sample.split("{", 1)[0])
        if key:
            out[key] += value
    return out


def one_run(art: str, rate: float, port: int | None, n: int, clients: int,
            log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One server at one shadow rate: (its figures, its backend and precision)."""
    server = serve_port([art], log, env={"EESERVE_SHADOW_RATE": str(rate)}, port=port,
                        timeout=300)
    with running(server):
        settings = served_settings(server.url)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            subprocess.run(eeserve("bench", server.url, "-c", str(clients), "-n", str(n),
                                   "--warmup", str(clients), "--quiet", "--json", str(out)),
                           check=True)
            run = json.loads(out.read_text())["runs"][0]
        time.sleep(2)  # let idle-time shadow work finish before reading the counters
        counts = shadow_counts(server.url)
    return {"rate": rate, "throughput_rps": run["throughput_rps"],
            "p99_ms": run["latency_ms"]["p99"], "p50_ms": run["latency_ms"]["p50"],
            **counts}, settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.shadow_cost",
                                 description=DESCRIPTION)
    ap.add_argument("artifact")
    ap.add_argument("--rates", default="0,0.01,0.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", "--requests", type=int, default=400)
    ap.add_argument("-c", "--clients", type=int, default=16)
    ap.add_argument("--port", type=int, default=None, help="serve on this port (default: free)")
    ap.add_argument("--json", "--out", dest="json", type=Path,
                    default=ROOT / "docs/figures/shadow_cost.json",
                    help="write the run's record here (default %(default)s)")
    a = ap.parse_args(argv)
    rates = [float(x) for x in a.rates.split(",")]
    LOGS.mkdir(exist_ok=True)
    runs = []
    settings: dict[str, Any] = {}
    for r in range(a.rounds):
        order = rates[r % len(rates):] + rates[:r % len(rates)]
        for rate in order:
            res, settings = one_run(a.artifact, rate, a.port, a.requests, a.clients,
                                    LOGS / f"shadow_cost-serve-r{r}-{rate:g}.log")
            res["round"] = r
            print(json.dumps(res), flush=True)
            runs.append(res)
    summary = []
    for rate in rates:
        mine = [x for x in runs if x["rate"] == rate]
        summary.append({"rate": rate, **{k: statistics.median(x[k] for x in mine) for k in
                                         ("throughput_rps", "p50_ms", "p99_ms", "checks",
                                          "dropped")}})
    base = summary[0]["throughput_rps"]
    for s in summary:
        s["throughput_vs_rate0"] = round(s["throughput_rps"] / base, 4)
    record("reliability.shadow_cost", a.json,
           {"runs": runs, "median": summary, "clients": a.clients, "requests": a.requests,
            "rounds": a.rounds}, **settings, artifact=a.artifact, rates=rates)
    for s in summary:
        print(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
