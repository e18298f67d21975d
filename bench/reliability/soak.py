"""Soak a live eeserve: open-loop load at `--load` x its capacity, valid and invalid mixed.

For `--minutes` or `--hours`, Poisson arrivals at `--load` times the capacity measured first
(closed loop, 16 clients, `--probe-s` seconds; `--rate` gives the rate instead); one request in
five is deliberately bad. Reports error counts by kind and status and, per window of
`--window-s` seconds (a minute by default): valid 200s, p50 / p99 (p99 from 100 answers up),
answers by status, and at the window's start the server's resident memory, open file
descriptors and threads -- per process of its tree (`--serve`: the server this command starts,
worker processes included) or, for a server given by URL, its own `process_*` metrics (RSS and
open files of the main process only). Memory is kept per window, so a day-long soak is fine.
Exits 1 when any answer was unexpected (a 5xx, a lost or hung request). Loopback only.

    python -m bench.reliability.soak --serve artifacts/text-default --minutes 10 --load 0.8 \
        --json docs/figures/soak_cpu.json
    python -m bench.reliability.soak http://127.0.0.1:18804 --minutes 10 --load 0.8 \
        --json docs/figures/soak_cpu.json
    python -m bench.reliability.soak --serve artifacts/text-default --hours 2 --load 0.8 \
        --serve-args "--backend onnx --onnx-threads 1" --json bench-out/soak_2h.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Server, record, running, scrape, serve
from bench.reliability._common import (
    SENTENCES,
    capacity,
    is_loopback,
    p50,
    p99,
    post_classify,
    process_sample,
    served_settings,
)

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
CLIENT_TIMEOUT_S = 60.0

# (kind, body, expected statuses): one in five requests is deliberately bad. A 429 is a right
# answer to any of them: when the queue is full, requests are shed before the body is read.
BAD: list[tuple[str, dict[str, Any], set[int]]] = [
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


@dataclass
class Window:
    """What one window's requests (by the time they were sent) got."""

    index: int
    start_s: float
    sample: dict[str, Any]
    pending: int = 0
    valid_ms: list[float] = field(default_factory=list)  # latencies of valid 200s
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0

    def summary(self) -> dict[str, Any]:
        return {"window": self.index, "start_s": round(self.start_s, 1),
                "sent": sum(self.statuses.values()), "ok": len(self.valid_ms),
                "p50_ms": p50(self.valid_ms), "p99_ms": p99(self.valid_ms),
                "statuses": dict(sorted(self.statuses.items())),
                "5xx": sum(n for s, n in self.statuses.items() if s.startswith("5")),
                "unexpected": self.unexpected, **self.sample}


def metrics_sample(url: str) -> dict[str, Any]:
    """The server's own process metrics (its main process): RSS and open files."""
    m = scrape(url)
    rss = m.get("process_resident_memory_bytes")
    fds = m.get("process_open_fds")
    return {"rss_mb": round(rss / 2**20, 1) if rss is not None else None,
            "fds": int(fds) if fds is not None else None, "threads": None}


async def soak(args: argparse.Namespace, url: str, server: Server | None) -> dict[str, Any]:
    def sample() -> dict[str, Any]:
        return process_sample(server) if server is not None else metrics_sample(url)

    rng = random.Random(1)
    duration_s = args.hours * 3600 if args.hours is not None else args.minutes * 60
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=128)
    by_kind_status: Counter[tuple[str, str]] = Counter()
    windows: dict[int, Window] = {}
    done: list[dict[str, Any]] = []

    def close_finished(current: int | None) -> None:
        """Summarise (and forget the latencies of) the past windows with nothing in flight,
        in order."""
        for i in sorted(windows):
            w = windows[i]
            if (current is not None and i >= current) or w.pending:
                return
            done.append(w.summary())
            del windows[i]
            print(json.dumps({k: v for k, v in done[-1].items() if "_by_pid" not in k}),
                  flush=True)

    async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_S,
                                 trust_env=False) as client:
        start = await asyncio.to_thread(sample)
        cap = None if args.rate else await capacity(client, url, args.policy, 16, args.probe_s)
        rate = args.rate or (cap or 0.0) * args.load
        if rate <= 0:
            raise SystemExit("soak: error: the server answered no request in the capacity probe")
        in_flight: set[asyncio.Task[None]] = set()

        async def fire(w: Window, kind: str, body: dict[str, Any], ok: set[int]) -> None:
            status, ms = await post_classify(client, url, body, CLIENT_TIMEOUT_S)
            by_kind_status[(kind, status)] += 1
            w.statuses[status] += 1
            w.unexpected += not (status.isdigit() and int(status) in ok)
            if kind == "valid" and status == "200":
                w.valid_ms.append(ms)
            w.pending -= 1

        t0 = time.perf_counter()
        nxt = t0
        while nxt - t0 < duration_s:
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            index = int((nxt - t0) // args.window_s)
            if index not in windows:  # a new window (the index only grows)
                close_finished(index)
                windows[index] = Window(index, nxt - t0, await asyncio.to_thread(sample))
            w = windows[index]
            w.pending += 1
            task = asyncio.create_task(fire(w, *pick(rng, args.policy)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            nxt += rng.expovariate(rate)
        await asyncio.gather(*in_flight)
        close_finished(None)
        end = await asyncio.to_thread(sample)
    p99s = [w["p99_ms"] for w in done if w["p99_ms"]]
    slim = {k: v for k, v in start.items() if "_by_pid" not in k}
    return {
        "url": url, "policy": args.policy,
        "capacity_rps": round(cap, 2) if cap is not None else None,
        "load": args.load if cap is not None else None, "offered_rps": round(rate, 2),
        "duration_s": duration_s, "window_s": args.window_s,
        "sent": sum(by_kind_status.values()),
        "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(by_kind_status.items())},
        "unexpected": sum(w["unexpected"] for w in done),
        "5xx": sum(w["5xx"] for w in done),
        "p99_first_window_ms": p99s[0] if p99s else None,
        "p99_last_window_ms": p99s[-1] if p99s else None,
        "start": slim, "end": {k: v for k, v in end.items() if "_by_pid" not in k},
        "rss_mb_start": start["rss_mb"], "rss_mb_end": end["rss_mb"],
        "windows": done, "end_by_pid": {k: v for k, v in end.items() if "_by_pid" in k},
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.soak",
                                 description=DESCRIPTION)
    ap.add_argument("url", nargs="?", help="a running server on loopback (else --serve)")
    ap.add_argument("--serve", type=Path, metavar="ARTIFACT",
                    help="start `eeserve serve ARTIFACT` on a free loopback port and soak it")
    ap.add_argument("--serve-args", default="", help="extra `eeserve serve` flags (--serve)")
    ap.add_argument("--policy", default="beem")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0)
    length.add_argument("--hours", type=float, default=None)
    ap.add_argument("--window-s", type=float, default=60.0,
                    help="seconds per reported window (default: a minute)")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--rate", type=float, default=None,
                    help="offered requests/s (skips the capacity probe and --load)")
    ap.add_argument("--probe-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="write the run's record here")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if bool(args.url) == bool(args.serve):
        ap.error("give a server's URL or --serve ARTIFACT (not both)")
    if args.url and not is_loopback(args.url):
        print("soak: error: only loopback URLs are allowed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if args.serve:
            extra = shlex.split(args.serve_args)
            with running(serve([args.serve], Path(tmp) / "serve.log", *extra)) as server:
                report = asyncio.run(soak(args, server.url, server))
                settings = served_settings(server.url)
        else:
            extra = []
            report = asyncio.run(soak(args, args.url, None))
            settings = served_settings(args.url)
    print(json.dumps({k: v for k, v in report.items() if k not in ("windows", "end_by_pid")},
                     indent=2))
    record("reliability.soak", args.json, report, **settings, serve_args=extra,
           artifact=str(args.serve) if args.serve else None)
    return 0 if report["unexpected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
