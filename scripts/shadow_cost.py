"""Cost of shadow checks: closed-loop throughput and p99 over HTTP at several shadow rates.

For each round and each rate (order rotated every round, so the rates are interleaved), start
`eeserve serve ART` with EESERVE_SHADOW_RATE=rate, run `eeserve bench` (closed loop, 16 clients,
one test-split text per request, default policy), read /metrics for the shadow checks done and
the shadow rows dropped, stop the server. Medians over rounds go to docs/figures/shadow_cost.json.

    python scripts/shadow_cost.py artifacts/text-default --rates 0,0.01,0.1 --rounds 3 -n 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("server not ready in time")


def _shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5, trust_env=False).text
    out = {"checks": 0.0, "disagreements": 0.0, "dropped": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "eeserve_shadow_checks_total":
                out["checks"] += s.value
            elif s.name == "eeserve_shadow_disagreements_total":
                out["disagreements"] += s.value
            elif s.name == "eeserve_shadow_dropped_total":
                out["dropped"] += s.value
    return out


def one_run(art: str, rate: float, port: int, n: int, clients: int, log: Path) -> dict[str, Any]:
    env = {**os.environ, "EESERVE_SHADOW_RATE": str(rate), "EESERVE_LOG_JSON": "false"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "a") as lf:
        proc = subprocess.Popen([str(BIN / "eeserve"), "serve", art, "--port", str(port),
                                 "--device", "cpu"], stdout=lf, stderr=subprocess.STDOUT,
                                env=env)
    try:
        _wait_ready(url, proc)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            subprocess.run([str(BIN / "eeserve"), "bench", url, "-c", str(clients), "-n", str(n),
                            "--warmup", str(clients), "--quiet", "--json", str(out)],
                           check=True)
            run = json.loads(out.read_text())["runs"][0]
        time.sleep(2)  # let idle-time shadow work finish before reading the counters
        counts = _shadow_counts(url)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"rate": rate, "throughput_rps": run["throughput_rps"],
            "p99_ms": run["latency_ms"]["p99"], "p50_ms": run["latency_ms"]["p50"], **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--rates", default="0,0.01,0.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", "--requests", type=int, default=400)
    ap.add_argument("-c", "--clients", type=int, default=16)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--out", default=str(ROOT / "docs/figures/shadow_cost.json"))
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",")]
    log = ROOT / "logs" / "shadow_cost-serve.log"
    log.parent.mkdir(exist_ok=True)
    runs = []
    for r in range(a.rounds):
        order = rates[r % len(rates):] + rates[:r % len(rates)]
        for rate in order:
            res = one_run(a.artifact, rate, a.port, a.requests, a.clients, log)
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
    Path(a.out).write_text(json.dumps({"runs": runs, "median": summary, "clients": a.clients,
                                       "requests": a.requests, "rounds": a.rounds}, indent=1))
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
