#!/usr/bin/env python
"""Issue 19 figures: what abusive and large images cost a live server, and what they do to a
concurrent classification. Loopback only, bounded in time; a fresh server per case so its peak
RSS (VmHWM) belongs to that case. Runs the code of each `--repo` given (e.g. the unchanged code
and this branch), cases interleaved.

    python scripts/reliability_images.py --repo before=/work/wt-relin-before \
        --repo after=/work/wt-relin --json docs/figures/reliability_images.json

Cases (tiny models: tiny-text and tiny-caption, built into --artifacts when missing):
  strip        one caption request of a 1×200000 PNG (638 bytes)
  large        one request of 8 smooth 4000×3000 JPEGs (within every limit)
  abuse-tall   classify latency while 7 clients send captions of 8 tall (1×20000) PNGs each
  abuse-legit  the same with 8 images of 2000×2000 (within every limit)
Per case: answer statuses, seconds, RSS before, peak during (VmHWM), RSS just after and 30 s
after; for the abuse cases the classify p50 / p99 alone and under abuse.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

TEXT = "a gripping, beautifully shot film with a tedious middle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def smooth(w: int, h: int, fmt: str) -> bytes:
    im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=80) if fmt == "JPEG" else im.save(buf, format=fmt)
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Live:
    """`python -m service serve` of one checkout on a free port."""

    def __init__(self, repo: Path, models: list[Path], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(repo), "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", *map(str, models), "--host",
             "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--plain-logs"],
            cwd=repo, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-1500:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server not ready")

    def rss(self) -> float:
        return proc_mb(self.proc.pid, "VmRSS")

    def peak(self) -> float:
        return proc_mb(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
            assert r.status_code == 200, r.text
            if stop_at is not None and time.monotonic() > stop_at:
                break
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 2)


def one_request_case(live: Live, images: list[bytes]) -> dict[str, Any]:
    before = live.rss()
    t0 = time.perf_counter()
    r = httpx.post(f"{live.url}/v1/caption", json={"images": [b64(x) for x in images]},
                   timeout=300, trust_env=False)
    secs = time.perf_counter() - t0
    after = live.rss()
    time.sleep(30)
    return {"status": r.status_code, "answer": r.text[:160], "seconds": round(secs, 2),
            "rss_before_mb": round(before, 1), "peak_mb": round(live.peak(), 1),
            "rss_after_mb": round(after, 1), "rss_after_30s_mb": round(live.rss(), 1)}


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


def abuse_case(live: Live, images: list[bytes], clients: int = 7,
               seconds: float = 40.0) -> dict[str, Any]:
    classify_latencies(live.url, 10)  # warm
    alone = classify_latencies(live.url, 300, every_s=0.02)
    before = live.rss()
    body = json.dumps({"images": [b64(x) for x in images]}).encode()
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_abusers, args=(live.url, body, clients, stop, out))
    proc.start()
    time.sleep(3.0)  # the abusers' process is up and sending
    under = classify_latencies(live.url, 300, stop_at=time.monotonic() + seconds,
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
            "rss_before_mb": round(before, 1), "peak_mb": round(live.peak(), 1)}


CASES = {
    "strip": lambda: ("one", [png(1, 200_000)]),
    "large": lambda: ("one", [smooth(4000, 3000, "JPEG")] * 8),
    "abuse-tall": lambda: ("abuse", [png(1, 20_000)] * 8),
    "abuse-legit": lambda: ("abuse", [smooth(2000, 2000, "PNG")] * 8),
}


def ensure_artifacts(root: Path, repo: Path) -> list[Path]:
    out = []
    for recipe in ("tiny-text", "tiny-caption"):
        d = root / recipe
        if not (d / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "service", "train", recipe, "--out", str(d)],
                           cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
        out.append(d)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", required=True, help="label=checkout directory")
    ap.add_argument("--artifacts", default="/tmp/eeserve-reliability-arts")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    repos = [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in args.repo]
    models = ensure_artifacts(Path(args.artifacts), repos[-1][1])
    results: dict[str, dict[str, Any]] = {}
    for case in args.cases.split(","):
        kind, images = CASES[case]()
        for label, repo in repos:  # interleaved: each case on every checkout in turn
            live = Live(repo, models, Path(f"/tmp/reliability-{label}-{case}.log"))
            try:
                got = one_request_case(live, images) if kind == "one" else \
                    abuse_case(live, images)
            finally:
                live.stop()
            results.setdefault(case, {})[label] = got
            print(json.dumps({"case": case, "code": label, **got}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
