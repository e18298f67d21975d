"""Engine processes (`--workers N`): resident memory per process, and latency at a fixed rate.

1. For each `--workers` count: `eeserve serve ART --workers N --backend onnx`, `--requests`
   BEEM requests, then the resident memory of every process of the server (front and engines).
2. Open loop (`python -m bench.overload URL --mode open`, k6) at `--factor` x `--capacity-rps`
   for `--duration-s` against the ONNX Runtime peer with `--peer-workers` uvicorn workers and
   against eeserve `--workers` (the largest count of step 1), policy `--policy`: p50/p99.

    OMP_WAIT_POLICY=PASSIVE python -m bench.processes artifacts/text-default --workers 1 2 \\
        --capacity-rps 150 --factor 0.7 --duration-s 60 \\
        --json docs/figures/open_loop_and_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import record, running, serve, start

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def memory(art: str, workers: int, requests: int, policy: str, logs: Path) -> dict[str, float]:
    """MiB resident per process (front first) after `requests` answered requests."""
    with running(serve([art], logs / f"rss-{workers}.log", "--workers", str(workers),
                       "--backend", "onnx")) as s:
        with httpx.Client(trust_env=False, timeout=30) as c:
            for _ in range(requests):
                c.post(s.url + "/v1/classify", json={"inputs": ["a fine film"],
                                                     "policy": policy})
        time.sleep(1.0)
        return {str(p): round(v, 1) for p, v in s.rss_mb().items()}


def open_loop(url: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "bench.overload", url, "--mode", "open",
                    "--capacity-rps", str(args.capacity_rps), "--factor", str(args.factor),
                    "--duration-s", str(args.duration_s), "--policy", args.policy,
                    "--settle-s", "1", "--json", str(out)], check=True)
    res: dict[str, Any] = json.loads(out.read_text())["results"]
    return {k: res.get(k) for k in ("offered_rps", "goodput_rps", "ok_p50_ms", "ok_p95_ms",
                                    "ok_p99_ms", "sent", "lost_or_hung")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.processes", description=DESCRIPTION)
    p.add_argument("artifact", type=Path, help="text artifact directory")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--requests", type=int, default=200, help="before reading memory (200)")
    p.add_argument("--policy", default="beem")
    p.add_argument("--capacity-rps", type=float, default=150.0,
                   help="the peer's measured closed-loop capacity (bench.compare)")
    p.add_argument("--factor", type=float, default=0.7, help="offered rate / capacity (0.7)")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--peer-workers", type=int, default=2)
    p.add_argument("--json", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        print(f"bench.processes: error: {args.artifact}: not an artifact directory",
              file=sys.stderr)
        return 2
    art, logs = str(args.artifact), Path(tempfile.mkdtemp(prefix="bench-processes-"))
    out: dict[str, Any] = {"rss_mb": {}, "open_loop": {}}
    for w in args.workers:
        out["rss_mb"][f"workers={w}"] = memory(art, w, args.requests, args.policy, logs)
        print(f"--workers {w}: resident MiB per process {out['rss_mb'][f'workers={w}']}")
    peer = [sys.executable, "-m", "bench.peers.onnx", art, "--runtime", "onnx", "--workers",
            str(args.peer_workers), "--threads", "1", "--max-batch", "16"]
    top = max(args.workers)
    servers = {f"peer-onnx-w{args.peer_workers}": lambda: start("peer", peer, logs / "peer.log"),
               f"eeserve-w{top}": lambda: serve([art], logs / "ee.log", "--workers", str(top),
                                                "--backend", "onnx", "--max-batch-size", "16")}
    for name, launch in servers.items():
        with running(launch()) as s:
            out["open_loop"][name] = open_loop(s.url, args, logs / f"{name}.json")
        print(f"{name}: {out['open_loop'][name]}")
    record("processes", args.json, out, backend="onnx", precision="fp32", threads=1,
           workers=args.workers, peer_workers=args.peer_workers, policy=args.policy,
           capacity_rps=args.capacity_rps, factor=args.factor, duration_s=args.duration_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
