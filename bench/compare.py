"""eeserve against the servers a user would run instead, over HTTP, closed loop (k6), interleaved.

Starts every target's server at once on 127.0.0.1 (idle ones use no CPU), then runs k6
(bench/k6/closed_loop.js) against each target in turn, `--rounds` times with the order reversed
every other round: `--vus` clients, one real test sentence per request (the artifact's
eval_texts.jsonl, gold labels known), for `--duration` seconds. Per run: requests/s answered
200 (`req_s`; `sent_s` counts refusals too), p50/p99 of the answered requests, failures,
accuracy of the answers, and the CPU the server's whole process tree used (cores busy, from
/proc: worker processes counted). Medians over rounds; one JSON record with the machine, the
commit and each target's backend, precision, threads and workers.

Targets (`SERVER[:POLICY]`; the policy is sent per request, none sent = the server's default):
- `peer-onnx`: the ONNX Runtime peer (`python -m bench.peers.onnx --runtime onnx`: FastAPI +
  ONNX Runtime, whole fp32 graph, dynamic batching, 1 intra-op thread per worker).
- `peer-torch`: the same peer on torch eager, one request at a time.
- `onnx`, `onnx2`, `onnxseq`, `int8`, `torch`: `eeserve serve --backend onnx` (1 intra-op
  thread), with 2 intra-op threads, with one layer call at a time (EESERVE_PARALLEL_STEPS=1),
  `--precision int8`, and `--backend torch --torch-threads 1`.
- `NAME-wN` (any of the above but infinity): N worker processes: `peer-onnx-w2` is the peer
  under `uvicorn --workers 2`, `onnx-w2` is `eeserve serve --workers 2` (two engine
  processes behind one front); without it, one (`eeserve serve --workers 1`).
- `infinity`: infinity-emb's torch engine from the throwaway venv `--infinity-venv` serving
  `--hf-dir` (both made by bench/peers/infinity.sh).

    OMP_WAIT_POLICY=PASSIVE python -m bench.compare artifacts/text-default \
        --targets peer-onnx peer-onnx-w2 onnx:none onnx:beem onnx-w2:none onnx-w2:beem \
        --rounds 3 \
        --duration 20 --json docs/figures/http_compare.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Server, eeserve, record, run_k6, start

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
K6_SCRIPT = "closed_loop.js"
INFINITY_ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


@dataclass(frozen=True)
class Spec:
    """How to start one target's server, and what to label its figures with."""

    cmd: list[str]
    settings: dict[str, Any]
    kind: str = "eeserve"
    ready: str = "/readyz"
    env: dict[str, str] = field(default_factory=dict)


def _eeserve_spec(args: argparse.Namespace, workers: int, extra: list[str],
                  settings: dict[str, Any], env: dict[str, str] | None = None) -> Spec:
    cmd = eeserve("serve", str(args.artifact), "--host", "127.0.0.1", "--device", "cpu",
                  "--plain-logs", "--max-batch-size", str(args.max_batch), "--workers",
                  str(workers), *extra)
    return Spec(cmd, {"server": "eeserve", "workers": workers, **settings}, env=env or {})


def _peer_spec(args: argparse.Namespace, runtime: str, workers: int) -> Spec:
    cmd = [sys.executable, "-m", "bench.peers.onnx", str(args.artifact), "--runtime", runtime,
           "--max-batch", str(args.max_batch), "--workers", str(workers)]
    if runtime == "onnx":
        cmd += ["--threads", "1"]
    return Spec(cmd, {"server": f"peer ({runtime})", "backend": runtime, "precision": "fp32",
                      "threads": 1 if runtime == "onnx" else "torch default",
                      "workers": workers, "depth": "full"})


def _infinity_spec(args: argparse.Namespace) -> Spec:
    if args.hf_dir is None:
        raise SystemExit("bench.compare: error: target infinity needs --hf-dir "
                         "(made by bench/peers/infinity.sh)")
    exe = Path(args.infinity_venv) / "bin" / "infinity_emb"
    cmd = [str(exe), "v2", "--model-id", str(args.hf_dir), "--served-model-name", "peer",
           "--engine", "torch", "--device", "cpu", "--batch-size", "8", "--host", "127.0.0.1"]
    return Spec(cmd, {"server": "infinity-emb", "backend": "torch", "precision": "fp32",
                      "threads": "torch default", "workers": 1, "depth": "full"},
                kind="infinity", ready="/health", env=INFINITY_ENV)


ONNX: dict[str, Any] = {"backend": "onnx", "precision": "fp32", "threads": 1}
SERVERS: dict[str, Callable[[argparse.Namespace, int], Spec]] = {
    "onnx": lambda a, w: _eeserve_spec(a, w, ["--backend", "onnx"], ONNX),
    "onnx2": lambda a, w: _eeserve_spec(a, w, ["--backend", "onnx", "--onnx-threads", "2"],
                                        {**ONNX, "threads": 2}),
    "onnxseq": lambda a, w: _eeserve_spec(a, w, ["--backend", "onnx"],
                                          {**ONNX, "parallel_steps": 1},
                                          env={"EESERVE_PARALLEL_STEPS": "1"}),
    "int8": lambda a, w: _eeserve_spec(a, w, ["--backend", "onnx", "--precision", "int8"],
                                       {**ONNX, "precision": "int8"}),
    "torch": lambda a, w: _eeserve_spec(a, w, ["--backend", "torch", "--torch-threads", "1"],
                                        {"backend": "torch", "precision": "fp32",
                                         "threads": 1}),
    "peer-onnx": lambda a, w: _peer_spec(a, "onnx", w),
    "peer-torch": lambda a, w: _peer_spec(a, "torch", w),
    "infinity": lambda a, w: _infinity_spec(a),
}
WORKERS = re.compile(r"(.+?)-w(\d+)$")  # NAME-wN: the server with N worker processes


def spec_for(server: str, args: argparse.Namespace) -> Spec:
    """The spec of one server name: a name of `SERVERS`, optionally `-wN` (N processes)."""
    m = WORKERS.match(server)
    base, workers = (m.group(1), int(m.group(2))) if m else (server, 1)
    if base not in SERVERS or workers < 1 or (m and base == "infinity"):
        names = ", ".join(SERVERS)
        raise SystemExit(f"bench.compare: error: unknown server {server!r} in --targets "
                         f"(one of: {names}; add -wN for N worker processes)")
    return SERVERS[base](args, workers)


def measure(server: Server, policy: str, texts: Path, args: argparse.Namespace,
            summary: Path, labels: list[str]) -> dict[str, Any]:
    """One k6 closed-loop run against `server`; its figures."""
    env = {"URL": server.url, "POLICY": policy, "TEXTS": str(texts),
           "DURATION": str(args.duration), "VUS": str(args.vus), "KIND": server.kind,
           "LABELS": json.dumps(labels)}
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    m = run_k6(K6_SCRIPT, env, summary, timeout=args.duration + 120)
    cores = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    lat = m.get("ok_latency", {})
    sent, failed = m["http_reqs"]["count"], m.get("failed", {}).get("count", 0)
    seconds = sent / m["http_reqs"]["rate"] if m["http_reqs"]["rate"] else float("inf")
    return {"req_s": (sent - failed) / seconds,  # answered: refusals are not throughput
            "p50_ms": lat.get("med"),
            "p99_ms": lat.get("p(99)"), "accuracy": m.get("correct", {}).get("value"),
            "failed": failed, "sent_s": sent / seconds, "server_cores": cores}


def _line(label: str, d: dict[str, Any]) -> str:
    acc = d["accuracy"]
    return (f"{label:16s} {d['req_s']:7.1f} req/s  p50 {d['p50_ms'] or 0:.1f}  p99 "
            f"{d['p99_ms'] or 0:.1f} ms  acc {acc if acc is None else round(acc, 4)}  cores "
            f"{d['server_cores']:.2f}  failed {d['failed']}")


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per target, the median of each figure over its rounds (None figures skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for target, rs in runs.items():
        if rs:
            out[target] = {k: (statistics.median(v) if (v := [r[k] for r in rs
                                                              if r[k] is not None]) else None)
                           for k in rs[0]}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=DESCRIPTION)
    p.add_argument("artifact", type=Path, help="text artifact directory")
    p.add_argument("--targets", nargs="+", default=["peer-onnx", "onnx:none", "onnx:beem"],
                   help="SERVER[:POLICY] (default: peer-onnx onnx:none onnx:beem)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, order reversed every other")
    p.add_argument("--duration", type=int, default=20, help="seconds per run (20)")
    p.add_argument("--vus", type=int, default=16, help="closed-loop clients (16)")
    p.add_argument("--max-batch", type=int, default=16, help="servers' batch limit (16)")
    p.add_argument("--infinity-venv", default="/tmp/infinity-venv")
    p.add_argument("--hf-dir", type=Path, help="standard HF classifier dir (for infinity)")
    p.add_argument("--cpus", help="pin every server to these CPUs (taskset -c, e.g. 0 or 0,1); "
                                   "the load generator is not pinned")
    p.add_argument("--logs", type=Path, help="where the servers' logs go (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the run's record here")
    return p


def _refuse(message: str) -> int:
    print(f"bench.compare: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        return _refuse(f"{args.artifact}: not an artifact directory (no manifest.json)")
    for flag in ("rounds", "duration", "vus", "max_batch"):
        if getattr(args, flag) < 1:
            return _refuse(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    names = list(dict.fromkeys(t.partition(":")[0] for t in args.targets))
    specs = {n: spec_for(n, args) for n in names}
    from models.build.eval_texts import load_eval_texts

    texts, gold = load_eval_texts(args.artifact, {}).split("test")
    labels = json.loads((args.artifact / "manifest.json").read_text()).get("labels") or []
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    logs = args.logs or tmp
    rows = tmp / "texts.json"
    rows.write_text(json.dumps([[t, y] for t, y in zip(texts, gold, strict=True)]))
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in args.targets}
    try:
        pin = ["taskset", "-c", args.cpus] if args.cpus else []
        for n, spec in specs.items():
            servers[n] = start(n, [*pin, *spec.cmd], logs / f"{n}.log", kind=spec.kind,
                               ready=spec.ready, env=spec.env)
        for r in range(args.rounds):
            for t in args.targets if r % 2 == 0 else args.targets[::-1]:
                n, _, policy = t.partition(":")
                res = measure(servers[n], policy, rows, args, tmp / f"{t}_{r}.json", labels)
                runs[t].append(res)
                print(f"round {r + 1} {_line(t, res)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = medians(runs)
    print(f"\nmedians over {args.rounds} rounds:")
    for t, d in summary.items():
        print(f"  {_line(t, d)}")
    record("compare", args.json, {"median": summary, "runs": runs},
           targets={t: {**specs[t.partition(':')[0]].settings,
                        "policy": t.partition(":")[2] or "server default"}
                    for t in args.targets},
           rounds=args.rounds, duration_s=args.duration, vus=args.vus, cpus=args.cpus,
           max_batch=args.max_batch, load="k6 closed loop, one test sentence per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
