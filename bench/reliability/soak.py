"""Soak a live eeserve: open-loop mixed load at `--load` x its capacity, valid and invalid.

For `--minutes` or `--hours`, Poisson arrivals at `--load` times the capacity measured first
(closed loops of `--probe-s` seconds: 16 clients on /v1/classify, 4 on /v1/caption when a
captioner is served; `--rate` gives the text rate instead). `--caption-share` of the offered
load (in capacity units) goes to captions, the rest to text requests split by `--mix`:
`classify` (a valid /v1/classify), `bad` (a deliberately bad one) and `oip` (a valid
`/v2/models/NAME/infer`). A scraper reads `/metrics` and `/readyz` every `--scrape-s` seconds,
as Prometheus and a load balancer would. Reports error counts by kind and status and, per
window of `--window-s` seconds: answers by status, each kind's 200s and p50 / p99 (p99 from
100 answers up), and at the window's start the server's resident memory, open file
descriptors and threads -- per process of its tree, named (`--serve`: the server this command
starts, engine processes included) or, for a server given by URL, its own `process_*` metrics
(main process only). Memory is kept per window, so a day-long soak is fine. Exits 1 when any
answer was unexpected (a 5xx, a lost or hung request, a failed scrape). Loopback only.
`python -m bench.reliability.soak_plot RECORD PNG` draws a record.

    python -m bench.reliability.soak --serve artifacts/text-default --minutes 10 --load 0.8 \\
        --json docs/figures/soak_cpu.json
    python -m bench.reliability.soak --serve artifacts/text-default artifacts/caption-default \\
        --serve-args "--workers auto" --hours 2 --load 0.5 --window-s 600 \\
        --mix classify=0.7,bad=0.1,oip=0.2 --caption-share 0.2 --json bench-out/soak_2h.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
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
    post,
    process_sample,
    served_settings,
)

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
CLIENT_TIMEOUT_S = 60.0
OK = {200, 429, 504}  # a valid request's right answers (shed, or its deadline passed)
Request = tuple[str, str, dict[str, Any], set[int]]  # kind, path, body, expected statuses

# (kind, body, expected statuses): deliberately bad /v1/classify bodies. A 429 is a right
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


def parse_mix(text: str) -> dict[str, float]:
    """`classify=0.7,bad=0.1,oip=0.2` as shares summing to 1."""
    mix: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        kind, _, share = part.partition("=")
        if kind not in ("classify", "bad", "oip"):
            raise argparse.ArgumentTypeError(f"--mix: unknown kind {kind!r} "
                                             "(classify, bad, oip)")
        try:
            mix[kind] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--mix: {part!r} is not KIND=SHARE") from None
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise argparse.ArgumentTypeError("--mix: shares must be >= 0 and not all 0")
    return {k: v / total for k, v in mix.items()}


@dataclass(frozen=True)
class Traffic:
    """What the soak sends: the served models' names and the request bodies."""

    policy: str
    mix: dict[str, float]
    text_model: str | None
    caption_model: str | None
    images: list[str]  # base64 PNGs of generated scenes

    def text_request(self, rng: random.Random) -> Request:
        kind = rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        if kind == "bad":
            name, body, ok = rng.choice(BAD)
            return name, "/v1/classify", body, ok
        text = rng.choice(SENTENCES)
        if kind == "oip" and self.text_model:
            return "oip", f"/v2/models/{self.text_model}/infer", {
                "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": [text]}],
                "parameters": {"policy": self.policy}}, OK
        return "classify", "/v1/classify", {"inputs": text, "policy": self.policy}, OK

    def caption_request(self, rng: random.Random) -> Request:
        return "caption", "/v1/caption", {"images": rng.choice(self.images),
                                          "model": self.caption_model}, OK


def scene_images(n: int = 8) -> list[str]:
    """`n` generated scenes (the demo captioner's kind of picture) as base64 PNGs."""
    from models.build.caption_data import make_scene, render_scene

    out = []
    for seed in range(n):
        buf = io.BytesIO()
        render_scene(make_scene(90_000 + seed), 224).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def served_models(url: str) -> tuple[str | None, str | None]:
    """The first text classifier's and the first captioner's names in /v1/models."""
    models = httpx.get(url + "/v1/models", timeout=10, trust_env=False).json()["models"]

    def first(kind: str) -> str | None:
        return next((m["name"] for m in models if m.get("kind") == kind), None)

    return first("text-classifier"), first("captioner")


@dataclass
class Window:
    """What one window's requests (by the time they were sent) got."""

    index: int
    start_s: float
    sample: dict[str, Any]
    pending: int = 0
    ok_ms: dict[str, list[float]] = field(default_factory=dict)  # kind -> latencies of 200s
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0

    def summary(self) -> dict[str, Any]:
        valid = self.ok_ms.get("classify", [])
        return {"window": self.index, "start_s": round(self.start_s, 1),
                "sent": sum(self.statuses.values()), "ok": len(valid),
                "p50_ms": p50(valid), "p99_ms": p99(valid),
                "by_kind": {k: {"ok": len(v), "p50_ms": p50(v), "p99_ms": p99(v)}
                            for k, v in sorted(self.ok_ms.items())},
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


@dataclass
class Run:
    """The soak's running state: windows by index, counts by (kind, status)."""

    window_s: float
    sample: Callable[[], dict[str, Any]]
    t0: float = 0.0
    windows: dict[int, Window] = field(default_factory=dict)
    floor: int = 0  # windows below it are closed: a late arrival counts in the next open one
    current: int = 0  # the newest window opened
    done: list[dict[str, Any]] = field(default_factory=list)
    by_kind_status: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    on_window: Callable[[Run], None] | None = None  # after each closed window (a checkpoint)

    async def window(self, at: float) -> Window:
        """The window of arrival time `at` (opened, with a process sample, on first use)."""
        index = max(self.floor, int((at - self.t0) // self.window_s))
        if index not in self.windows:  # a new window (indices only grow)
            self.current = max(self.current, index)
            self.close_finished(index)
            self.windows[index] = Window(index, at - self.t0, await asyncio.to_thread(self.sample))
        return self.windows[index]

    def close_finished(self, current: int | None) -> None:
        """Summarise (and forget the latencies of) the past windows with nothing in flight,
        in order."""
        for i in sorted(self.windows):
            w = self.windows[i]
            if (current is not None and i >= current) or w.pending:
                return
            self.done.append(w.summary())
            del self.windows[i]
            self.floor = i + 1
            if self.on_window is not None:
                self.on_window(self)
            print(json.dumps({k: v for k, v in self.done[-1].items() if "_by_pid" not in k}),
                  flush=True)

    def count(self, w: Window, kind: str, status: str, ms: float, ok: set[int]) -> None:
        self.by_kind_status[(kind, status)] += 1
        w.statuses[status] += 1
        w.unexpected += not (status.isdigit() and int(status) in ok)
        if status == "200" and kind in ("classify", "oip", "caption", "scrape"):
            w.ok_ms.setdefault(kind, []).append(ms)


async def arrivals(run: Run, rate: float, duration_s: float, rng: random.Random,
                   make: Callable[[random.Random], Request],
                   send: Callable[[str, dict[str, Any]], Awaitable[tuple[str, float]]]) -> None:
    """Poisson arrivals at `rate` for `duration_s`, each a request from `make`."""
    async def fire(w: Window, kind: str, path: str, body: dict[str, Any], ok: set[int]) -> None:
        status, ms = await send(path, body)
        run.count(w, kind, status, ms, ok)
        w.pending -= 1
        if not w.pending and w.index < run.current:  # its last answer: close it now
            run.close_finished(run.current)

    nxt = run.t0 + rng.expovariate(rate)
    while nxt - run.t0 < duration_s:
        await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        w = await run.window(nxt)
        w.pending += 1
        task = asyncio.create_task(fire(w, *make(rng)))
        run.in_flight.add(task)
        task.add_done_callback(run.in_flight.discard)
        nxt += rng.expovariate(rate)


async def scraper(run: Run, client: httpx.AsyncClient, url: str, every_s: float,
                  duration_s: float) -> None:
    """GET /metrics and /readyz every `every_s`; a failed scrape counts as unexpected."""
    while time.perf_counter() - run.t0 < duration_s:
        for path, kind in (("/metrics", "scrape"), ("/readyz", "readyz")):
            w = await run.window(time.perf_counter())
            t = time.perf_counter()
            try:
                r = await client.get(url + path, timeout=CLIENT_TIMEOUT_S)
                status = str(r.status_code)
                if kind == "scrape" and "eeserve_requests_total" not in r.text:
                    status = "bad-scrape"
            except httpx.HTTPError as e:
                status = f"lost:{type(e).__name__}"
            run.count(w, kind, status, (time.perf_counter() - t) * 1e3, {200})
        await asyncio.sleep(every_s)


async def rates(args: argparse.Namespace, client: httpx.AsyncClient, url: str,
                traffic: Traffic) -> dict[str, float | None]:
    """Capacities (probed one after the other, nothing else running) and offered rates."""
    text_cap = None if args.rate else await capacity(client, url, args.policy, 16, args.probe_s)
    share = args.caption_share if traffic.caption_model else 0.0
    cap_cap = None
    if share > 0:
        bodies = [traffic.caption_request(random.Random(i))[2] for i in range(4)]
        cap_cap = await capacity(client, url, args.policy, 4, args.probe_s, "/v1/caption", bodies)
    text_rate = args.rate or (text_cap or 0.0) * args.load * (1 - share)
    if text_rate <= 0:
        raise SystemExit("soak: error: the server answered no request in the capacity probe")
    return {"capacity_rps": text_cap, "caption_capacity_rps": cap_cap, "offered_rps": text_rate,
            "caption_offered_rps": (cap_cap or 0.0) * args.load * share}


async def soak(args: argparse.Namespace, url: str, server: Server | None) -> dict[str, Any]:
    def sample() -> dict[str, Any]:
        return process_sample(server) if server is not None else metrics_sample(url)

    text_model, caption_model = served_models(url)
    traffic = Traffic(args.policy, args.mix, text_model, caption_model,
                      scene_images() if caption_model and args.caption_share > 0 else [])
    duration_s = args.hours * 3600 if args.hours is not None else args.minutes * 60
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=128)
    run = Run(args.window_s, sample)
    async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_S,
                                 trust_env=False) as client:
        start = await asyncio.to_thread(sample)
        offered = await rates(args, client, url, traffic)

        if args.checkpoint is not None:
            run.on_window = lambda r: checkpoint(args, url, r, offered, duration_s, start)

        async def send(path: str, body: dict[str, Any]) -> tuple[str, float]:
            return await post(client, url, path, body, CLIENT_TIMEOUT_S)

        run.t0 = time.perf_counter()
        jobs = [arrivals(run, offered["offered_rps"] or 0.0, duration_s, random.Random(1),
                         traffic.text_request, send),
                scraper(run, client, url, args.scrape_s, duration_s)]
        if offered["caption_offered_rps"]:
            jobs.append(arrivals(run, offered["caption_offered_rps"], duration_s,
                                 random.Random(2), traffic.caption_request, send))
        await asyncio.gather(*jobs)
        await asyncio.gather(*run.in_flight)
        run.close_finished(None)
        end = await asyncio.to_thread(sample)
    return summarise(args, url, run, offered, duration_s, start, end)


def checkpoint(args: argparse.Namespace, url: str, run: Run, offered: dict[str, float | None],
               duration_s: float, start: dict[str, Any]) -> None:
    """The record so far (`partial`: the windows closed until now; `end` = the last window's
    sample), rewritten after every window, so a long soak that is stopped keeps its windows."""
    last = {k: v for k, v in run.done[-1].items() if k in start} if run.done else start
    report = summarise(args, url, run, offered, duration_s, start, last)
    record("reliability.soak", args.checkpoint, {**report, "partial": True},
           serve_args=shlex.split(args.serve_args) if args.serve else [])


def summarise(args: argparse.Namespace, url: str, run: Run, offered: dict[str, float | None],
              duration_s: float, start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    done = run.done
    p99s = [w["p99_ms"] for w in done if w["p99_ms"]]

    def slim(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if "_by_pid" not in k}

    return {
        "url": url, "policy": args.policy, "mix": args.mix, "caption_share": args.caption_share,
        **{k: round(v, 2) if v is not None else None for k, v in offered.items()},
        "load": args.load if offered["capacity_rps"] is not None else None,
        "duration_s": duration_s, "window_s": args.window_s, "scrape_s": args.scrape_s,
        "sent": sum(run.by_kind_status.values()),
        "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(run.by_kind_status.items())},
        "unexpected": sum(w["unexpected"] for w in done),
        "5xx": sum(w["5xx"] for w in done),
        "p99_first_window_ms": p99s[0] if p99s else None,
        "p99_last_window_ms": p99s[-1] if p99s else None,
        "start": slim(start), "end": slim(end),
        "rss_mb_start": start["rss_mb"], "rss_mb_end": end["rss_mb"],
        "windows": done, "end_by_pid": {k: v for k, v in end.items() if "_by_pid" in k},
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.soak",
                                 description=DESCRIPTION)
    ap.add_argument("url", nargs="?", help="a running server on loopback (else --serve)")
    ap.add_argument("--serve", type=Path, nargs="+", metavar="ARTIFACT",
                    help="start `eeserve serve ARTIFACT...` on a free loopback port and soak it")
    ap.add_argument("--serve-args", default="", help="extra `eeserve serve` flags (--serve)")
    ap.add_argument("--policy", default="beem")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0)
    length.add_argument("--hours", type=float, default=None)
    ap.add_argument("--window-s", type=float, default=60.0,
                    help="seconds per reported window (default: a minute)")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--rate", type=float, default=None,
                    help="offered text requests/s (skips the text probe and --load for them)")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix("classify=0.8,bad=0.2"),
                    help="shares of the text requests: classify, bad, oip "
                         "(default classify=0.8,bad=0.2)")
    ap.add_argument("--caption-share", type=float, default=0.0,
                    help="share of the offered load (in capacity units) sent as captions, when "
                         "a captioner is served (default 0)")
    ap.add_argument("--scrape-s", type=float, default=15.0,
                    help="seconds between /metrics + /readyz scrapes (default 15)")
    ap.add_argument("--probe-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="write the run's record here")
    ap.add_argument("--checkpoint", type=Path,
                    help="rewrite the record so far here after every window (a stopped soak "
                         "keeps its windows; `partial` is true)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if bool(args.url) == bool(args.serve):
        ap.error("give a server's URL or --serve ARTIFACT (not both)")
    if not 0.0 <= args.caption_share < 1.0:
        ap.error(f"--caption-share must be within [0, 1), got {args.caption_share}")
    if args.url and not is_loopback(args.url):
        print("soak: error: only loopback URLs are allowed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        if args.serve:
            extra = shlex.split(args.serve_args)
            with running(serve(args.serve, Path(tmp) / "serve.log", *extra)) as server:
                report = asyncio.run(soak(args, server.url, server))
                settings = served_settings(server.url)
        else:
            extra = []
            report = asyncio.run(soak(args, args.url, None))
            settings = served_settings(args.url)
    print(json.dumps({k: v for k, v in report.items() if k not in ("windows", "end_by_pid")},
                     indent=2))
    record("reliability.soak", args.json, report, **settings, serve_args=extra,
           artifacts=[str(a) for a in args.serve] if args.serve else None)
    return 0 if report["unexpected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
