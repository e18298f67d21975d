#!/usr/bin/env python
"""eeserve vs the servers a user would run instead, over HTTP, closed loop (k6), interleaved.

Starts every server at once on 127.0.0.1 (idle ones use no CPU), then runs k6 against each
target in turn, `--rounds` times with the order reversed every other round: VUS clients, one
real test sentence per request (the artifact's eval_texts.jsonl, gold labels known), for
`--duration` seconds. Per run: requests/s, p50/p99 of answered requests, failures, accuracy
of the answers, and the server process's CPU use (cores busy, from /proc). Medians over rounds.

Targets: `peer-onnx` (eeserve peer --runtime onnx: FastAPI + ONNX Runtime, whole graph, dynamic
batching), `onnx:POLICY` / `torch:POLICY` (eeserve serve --backend ...), `onnx2:POLICY` (onnx
with 2 intra-op threads), `onnxseq:POLICY` (onnx, one layer call at a time), `int8:POLICY`
(onnx int8), `infinity` (infinity-emb
torch engine from a throwaway venv given by --infinity-venv, serving --hf-dir).

    OMP_WAIT_POLICY=PASSIVE python scripts/http_compare.py artifacts/text-default \
        --targets peer-onnx onnx:none onnx:beem torch:beem --rounds 2 --duration 20 \
        --json docs/figures/http_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
K6 = str(BIN / "k6") if (BIN / "k6").exists() else "k6"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    kind: str = "eeserve"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """utime + stime of the server process and its threads (children not counted)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(name: str, cmd: list[str], log: Path, kind: str = "eeserve",
          ready: str = "/readyz", env: dict[str, str] | None = None) -> Server:
    port = free_port()
    full = [*cmd, "--port", str(port)]
    e = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
         **(env or {})}
    proc = subprocess.Popen(full, stdout=log.open("w"), stderr=subprocess.STDOUT, env=e,
                            cwd=ROOT)
    s = Server(name, proc, port, kind)
    import httpx

    for _ in range(1800):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-1500:]}")
        try:
            if httpx.get(s.url + ready, timeout=1).status_code == 200:
                return s
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} not ready: {log.read_text()[-1500:]}")


def k6_run(server: Server, policy: str, texts: Path, duration: int, vus: int,
           out: Path, labels: list[str]) -> dict[str, Any]:
    env = {**os.environ, "URL": server.url, "POLICY": policy, "TEXTS": str(texts),
           "DURATION": str(duration), "VUS": str(vus), "KIND": server.kind,
           "LABELS": json.dumps(labels)}
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    subprocess.run([K6, "run", "--quiet", "--summary-export", str(out),
                    str(ROOT / "scripts" / "closed_loop_k6.js")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    cores = (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
    m = json.loads(out.read_text())["metrics"]
    lat = m.get("ok_latency", {})
    return {"req_s": m["http_reqs"]["rate"], "p50_ms": lat.get("med"),
            "p99_ms": lat.get("p(99)"), "accuracy": m.get("correct", {}).get("value"),
            "failed": m.get("failed", {}).get("count", 0), "server_cores": cores}


def servers_for(args: argparse.Namespace, logs: Path) -> dict[str, Server]:
    art = str(args.artifact)
    ee = [str(BIN / "eeserve")]
    wanted = {t.split(":")[0] for t in args.targets}
    out: dict[str, Server] = {}
    common = ["--max-batch-size", str(args.max_batch), "--plain-logs"]
    if "peer-onnx" in wanted:
        out["peer-onnx"] = start("peer-onnx", [*ee, "peer", art, "--runtime", "onnx",
                                               "--max-batch", str(args.max_batch)],
                                 logs / "peer-onnx.log")
    if "onnx" in wanted:
        out["onnx"] = start("onnx", [*ee, "serve", art, "--device", "cpu", "--backend", "onnx",
                                     *common], logs / "onnx.log")
    if "onnx2" in wanted:  # two intra-op threads per layer call
        out["onnx2"] = start("onnx2", [*ee, "serve", art, "--device", "cpu", "--backend",
                                       "onnx", "--onnx-threads", "2", *common],
                             logs / "onnx2.log")
    if "onnxseq" in wanted:  # the round's layer calls one after another (parallel_steps=1)
        out["onnxseq"] = start("onnxseq", [*ee, "serve", art, "--device", "cpu", "--backend",
                                           "onnx", *common], logs / "onnxseq.log",
                               env={"EESERVE_PARALLEL_STEPS": "1"})
    if "int8" in wanted:
        out["int8"] = start("int8", [*ee, "serve", art, "--device", "cpu", "--backend", "onnx",
                                     "--precision", "int8", *common], logs / "int8.log")
    if "torch" in wanted:
        out["torch"] = start("torch", [*ee, "serve", art, "--device", "cpu", "--backend",
                                       "torch", "--torch-threads", "1", *common],
                             logs / "torch.log")
    if "infinity" in wanted:
        venv = Path(args.infinity_venv)
        out["infinity"] = start(
            "infinity", [str(venv / "bin" / "infinity_emb"), "v2", "--model-id",
                         str(args.hf_dir), "--served-model-name", "peer", "--engine", "torch",
                         "--device", "cpu", "--batch-size", "8", "--host", "127.0.0.1"],
            logs / "infinity.log", kind="infinity", ready="/health",
            env={"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS":
                 "0"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--targets", nargs="+", default=["peer-onnx", "onnx:none", "onnx:beem"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--vus", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--infinity-venv", default="/tmp/infinity-venv")
    ap.add_argument("--hf-dir", type=Path, help="standard HF classifier dir (for infinity)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from models.build.eval_texts import load_eval_texts

    texts, labels = load_eval_texts(args.artifact, {}).split("test")
    label_names = json.loads((args.artifact / "manifest.json").read_text()).get("labels") or []
    tmp = Path(tempfile.mkdtemp(prefix="http-compare-"))
    rows = tmp / "texts.json"
    rows.write_text(json.dumps([[t, y] for t, y in zip(texts, labels, strict=True)]))
    servers = servers_for(args, tmp)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in args.targets}
    try:
        for r in range(args.rounds):
            order = args.targets if r % 2 == 0 else args.targets[::-1]
            for t in order:
                name, _, policy = t.partition(":")
                res = k6_run(servers[name], policy, rows, args.duration, args.vus,
                             tmp / f"{t.replace(':', '_')}_{r}.json", label_names)
                runs[t].append(res)
                print(f"round {r + 1} {t:14s} {res['req_s']:7.1f} req/s  p50 "
                      f"{res['p50_ms']:.1f}  p99 {res['p99_ms']:.1f} ms  acc "
                      f"{res['accuracy']:.4f}  cores {res['server_cores']:.2f}  failed "
                      f"{res['failed']}", flush=True)
    finally:
        for s in servers.values():
            s.proc.terminate()
        for s in servers.values():
            s.proc.wait(30)
    summary = {t: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
               for t, rs in runs.items() if rs}
    print("\nmedians over rounds:")
    for t, d in summary.items():
        print(f"  {t:14s} {d['req_s']:7.1f} req/s  p50 {d['p50_ms']:.1f}  p99 {d['p99_ms']:.1f}"
              f" ms  acc {d['accuracy']:.4f}  cores {d['server_cores']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": runs, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
