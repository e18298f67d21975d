#!/usr/bin/env python
"""Soak a live eeserve: `--minutes` at `--load` x its measured capacity, valid and invalid
requests mixed; reports error counts by kind, p99 per minute (drift) and memory growth.

Not run in CI (it takes minutes). Loopback only.

    python scripts/soak.py http://127.0.0.1:8000 --minutes 10 --load 0.8 \
        --json docs/figures/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import SENTENCES, capacity, rss_mb  # noqa: E402

# (kind, body, expected statuses): one in five requests is deliberately bad. A 429 is a right
# answer to any of them: when the queue is full, requests are shed before the body is read.
BAD = [
    ("empty-list", {"inputs": []}, {400, 429}),
    ("not-a-string", {"inputs": [1, 2]}, {400, 429}),
    ("unknown-policy", {"inputs": "x", "policy": "nope"}, {400, 429}),
    ("negative-budget", {"inputs": "x", "latency_budget_ms": -1}, {400, 429}),
    ("unknown-model", {"inputs": "x", "model": "nope"}, {404, 429}),
    ("bad-param", {"inputs": "x", "policy": "maxprob", "params": {"threshold": 3}}, {400, 429}),
    ("too-long", {"inputs": "word " * 1000}, {400, 429}),
]


def pick(rng: random.Random, policy: str) -> tuple[str, dict[str, Any], set[int]]:
    if rng.random() < 0.2:
        return rng.choice(BAD)
    return "valid", {"inputs": rng.choice(SENTENCES), "policy": policy}, {200, 429, 504}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=128)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        rss0 = await rss_mb(client, args.url)
        cap = await capacity(client, args.url, args.policy, 16, args.probe_s)
        rate = cap * args.load
        results: list[tuple[int, str, str, float, bool]] = []  # minute, kind, status, ms, ok

        async def fire(minute: int, kind: str, body: dict[str, Any], ok: set[int]) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{args.url}/v1/classify", json=body)
                status, good = str(r.status_code), r.status_code in ok
            except httpx.HTTPError as e:
                status, good = f"lost:{type(e).__name__}", False
            results.append((minute, kind, status, (time.perf_counter() - t0) * 1e3, good))

        tasks = []
        t0 = time.perf_counter()
        nxt = t0
        rss_by_minute: list[float] = []
        while nxt - t0 < args.minutes * 60:
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            minute = int((nxt - t0) // 60)
            if len(rss_by_minute) <= minute:
                rss_by_minute.append(await rss_mb(client, args.url))
            tasks.append(asyncio.create_task(fire(minute, *pick(rng, args.policy))))
            nxt += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        rss1 = await rss_mb(client, args.url)
    per_minute = []
    for m in range(int(args.minutes + 0.999)):
        lat = [ms for mm, kind, st, ms, _ in results if mm == m and kind == "valid" and st == "200"]
        per_minute.append({"minute": m, "ok": len(lat),
                           "p50_ms": round(statistics.median(lat), 2) if lat else None,
                           "p99_ms": round(statistics.quantiles(lat, n=100)[98], 2)
                           if len(lat) >= 100 else None,
                           "rss_mb": round(rss_by_minute[m], 1) if m < len(rss_by_minute)
                           else None})
    p99s = [m["p99_ms"] for m in per_minute if m["p99_ms"]]
    return {
        "url": args.url, "policy": args.policy, "capacity_rps": round(cap, 2),
        "load": args.load, "offered_rps": round(rate, 2), "minutes": args.minutes,
        "sent": len(results),
        "by_kind_status": {f"{k} {s}": n for (k, s), n in
                           sorted(Counter((k, s) for _, k, s, _, _ in results).items())},
        "unexpected": sum(1 for *_, good in results if not good),
        "p99_first_minute_ms": p99s[0] if p99s else None,
        "p99_last_minute_ms": p99s[-1] if p99s else None,
        "rss_mb_start": round(rss0, 1), "rss_mb_end": round(rss1, 1),
        "per_minute": per_minute,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--policy", default="beem")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--probe-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("soak: error: only loopback URLs are allowed", file=sys.stderr)
        return 2
    report = asyncio.run(soak(args))
    print(json.dumps({k: v for k, v in report.items() if k != "per_minute"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["unexpected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
