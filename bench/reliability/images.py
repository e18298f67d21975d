"""What abusive and large images cost a live server and a concurrent classification.

Issue 19 figures. A fresh `eeserve serve` per case and checkout (each `--repo` runs its own
code; cases interleaved across checkouts), so its peak RSS (VmHWM) belongs to that case. Tiny
models: tiny-text and tiny-caption, built into --artifacts by the last checkout when missing.
Loopback only, bounded in time.

    git worktree add --detach /work/wt-relin-before f6bf745
    python -m bench.reliability.images --repo before=/work/wt-relin-before --repo after=$PWD \\
        --json docs/figures/reliability_images.json
    python -m bench.reliability.images --repo before=/work/wt-relin-before --repo after=$PWD \\
        --cases abuse-tall,abuse-legit --json docs/figures/reliability_abuse.json

Cases:
  strip        one caption request of a 1x200000 PNG (638 bytes)
  large        one request of 8 smooth 4000x3000 JPEGs (within every limit)
  abuse-tall   classify latency while 7 clients send captions of 8 tall (1x20000) PNGs each
  abuse-legit  the same with 8 images of 2000x2000 (within every limit)
Per case: answer statuses, seconds, RSS before, peak during (VmHWM), RSS just after and 30 s
after (the server's own process); for the abuse cases the classify p50 / p99 alone and under
abuse (the abusers run in a process of their own, so the probe shares no GIL with them).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import Server, record
from bench.reliability._common import ensure_artifacts, main_mb, parse_repos, serve_checkout

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
TEXT = "a gripping, beautifully shot film with a tedious middle"


def png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def smooth(w: int, h: int, fmt: str) -> bytes:
    from PIL import Image

    im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=80) if fmt == "JPEG" else im.save(buf, format=fmt)
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def classify_latencies(url: str, n: int, stop_at: float | None = None,
                       every_s: float = 0.0) -> list[float]:
    """Latencies (ms) of `n` single-text classifications, one at a time, started `every_s`
    apart (0: back to back), ending early at `stop_at`."""
    out = []
    next_start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as c:
        for _ in range(n):
            time.sleep(max(0.0, next_start - time.perf_counter()))
            t0 = time.perf_counter()
            next_start = t0 + every_s
            r = c.post("/v1/classify", json={"inputs": TEXT, "policy": "none"})
            out.append((time.perf_counter() - t0) * 1e3)
            if r.status_code != 200:
                raise RuntimeError(f"classify answered {r.status_code}: {r.text[:300]}")
            if stop_at is not None and time.monotonic() > stop_at:
                break
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 2)


def one_request_case(server: Server, images: list[bytes]) -> dict[str, Any]:
    before = main_mb(server)
    t0 = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/caption", json={"images": [b64(x) for x in images]},
                   timeout=300, trust_env=False)
    secs = time.perf_counter() - t0
    after = main_mb(server)
    time.sleep(30)
    return {"status": r.status_code, "answer": r.text[:160], "seconds": round(secs, 2),
            "rss_before_mb": round(before, 1), "peak_mb": round(main_mb(server, "VmHWM"), 1),
            "rss_after_mb": round(after, 1), "rss_after_30s_mb": round(main_mb(server), 1)}


def _abusers(url: str, body: bytes, clients: int, stop: Any, out: Any) -> None:
    """`clients` threads sending `body` to /v1/caption until `stop` is set (a process of its
    own, so the classify probe shares no GIL with the abusers); puts (statuses, seconds)."""
    statuses: Counter[int | str] = Counter()
    caption_s: list[float] = []

    def abuse() -> None:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    statuses[c.post("/v1/caption", content=body, headers={
                        "content-type": "application/json"}).status_code] += 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                caption_s.append(time.perf_counter() - t0)
                if statuses.get(429) or statuses.get(400):
                    time.sleep(0.05)  # refused at once: do not spin the client's own core

    threads = [threading.Thread(target=abuse) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    out.put((dict(statuses), caption_s))


def abuse_case(server: Server, images: list[bytes], clients: int = 7,
               seconds: float = 40.0) -> dict[str, Any]:
    classify_latencies(server.url, 10)  # warm
    alone = classify_latencies(server.url, 300, every_s=0.02)
    before = main_mb(server)
    body = json.dumps({"images": [b64(x) for x in images]}).encode()
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_abusers, args=(server.url, body, clients, stop, out))
    proc.start()
    time.sleep(3.0)  # the abusers' process is up and sending
    under = classify_latencies(server.url, 300, stop_at=time.monotonic() + seconds,
                               every_s=seconds / 300)  # spread over the whole abuse
    stop.set()
    statuses, caption_s = out.get(timeout=200)
    proc.join(30)
    return {"classify_alone_p50_ms": pct(alone, 50), "classify_alone_p99_ms": pct(alone, 99),
            "classify_under_abuse_p50_ms": pct(under, 50),
            "classify_under_abuse_p99_ms": pct(under, 99), "classify_n": len(under),
            "p99_ratio": round(pct(under, 99) / pct(alone, 99), 2),
            "caption_statuses": statuses,
            "caption_median_s": round(statistics.median(caption_s), 2) if caption_s else None,
            "rss_before_mb": round(before, 1), "peak_mb": round(main_mb(server, "VmHWM"), 1)}


CASES: dict[str, Callable[[], tuple[str, list[bytes]]]] = {
    "strip": lambda: ("one", [png(1, 200_000)]),
    "large": lambda: ("one", [smooth(4000, 3000, "JPEG")] * 8),
    "abuse-tall": lambda: ("abuse", [png(1, 20_000)] * 8),
    "abuse-legit": lambda: ("abuse", [smooth(2000, 2000, "PNG")] * 8),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.images",
                                 description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases: " + ", ".join(CASES))
    ap.add_argument("--repo", action="append", required=True, help="label=checkout directory")
    ap.add_argument("--artifacts", default="/tmp/eeserve-reliability-arts")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", type=Path, help="write the run's record here")
    args = ap.parse_args(argv)
    cases = args.cases.split(",")
    if unknown := [c for c in cases if c not in CASES]:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    repos = parse_repos(args.repo)
    models = ensure_artifacts(Path(args.artifacts), repos[-1][1])
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        kind, images = CASES[case]()
        for label, repo in repos:  # interleaved: each case on every checkout in turn
            server = serve_checkout(repo, models, Path(f"/tmp/reliability-{label}-{case}.log"))
            try:
                got = one_request_case(server, images) if kind == "one" else \
                    abuse_case(server, images)
            finally:
                server.stop()
            results.setdefault(case, {})[label] = got
            print(json.dumps({"case": case, "code": label, **got}), flush=True)
    record("reliability.images", args.json, results, repos={k: str(v) for k, v in repos},
           cases=cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
