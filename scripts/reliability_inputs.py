#!/usr/bin/env python
"""Issue 19 before/after probes that are not about speed: malformed inputs, stalled and idle
connections, requests cut by the shutdown grace, `eeserve bench --duration`. Loopback only,
bounded (each connection probe gives up after --wait seconds). Runs the code of each `--repo`.

    python scripts/reliability_inputs.py --repo before=/work/wt-relin-before \
        --repo after=/work/wt-relin --json docs/figures/reliability_inputs.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_images import Live, ensure_artifacts  # noqa: E402

V2 = "/v2/models/tiny-text/infer"
HEAD = b"POST /v1/classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


def tensor(data: Any) -> str:
    return json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                   "data": data}]})


INPUTS = {
    "v1 lone surrogate": ("/v1/classify", '{"inputs": "a\\ud800b"}'),
    "v1 NUL / ESC": ("/v1/classify", '{"inputs": "a\\u0000b\\u001b"}'),
    "v1 params NaN": ("/v1/classify", '{"inputs": "x", "params": {"threshold": NaN}}'),
    "v2 lone surrogate": (V2, tensor(["\ud800"])),
    "v2 nested 1000 deep": (V2, "[" * 1000 + "]" * 1000),
    "v2 huge int parameter": (V2, tensor(["x"])[:-1] + ', "parameters": {"deadline_ms": '
                              + "9" * 400 + "}}"),
}


def probe_inputs(url: str) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
        for name, (path, body) in INPUTS.items():
            r = c.post(path, content=body.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})
            try:
                field = r.json().get("field") if r.status_code >= 400 else None
            except ValueError:
                field = "(not JSON)"
            out[name] = f"{r.status_code}" + (f" {field}" if field else "")
    return out


def closed_within(port: int, sent: bytes, wait: float) -> str:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if sent:
            sock.sendall(sent)
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except TimeoutError:
            return f"open after {wait:g} s"
    status = got.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "-"
    return f"closed after {time.monotonic() - t0:.1f} s ({status})"


def probe_connections(port: int, wait: float) -> dict[str, str]:
    return {"sends nothing": closed_within(port, b"", wait),
            "half the head": closed_within(port, HEAD, wait),
            "half the body": closed_within(port, HEAD + b"content-length: 100\r\n\r\n{\"in",
                                           wait),
            "idle keep-alive": closed_within(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
                                             wait)}


def probe_shutdown(live: Live) -> str:
    """A request still reading its body when SIGTERM's grace (1 s) ends."""
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    sock.sendall(HEAD + b"content-length: 100\r\n\r\n{\"in")
    time.sleep(0.5)
    live.proc.send_signal(signal.SIGTERM)
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    sock.close()
    live.proc.wait(30)
    head, _, body = got.partition(b"\r\n\r\n")
    kind = "JSON" if body.startswith(b"{") else "plain text"
    rid = "with request id" if b"request_id" in body else "no request id"
    return f"{head[9:12].decode()} {kind}, {rid}"


def probe_bench(repo: Path, url: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    got = subprocess.run([sys.executable, "-m", "service", "bench", url, "--dataset", "tiny",
                          "-p", "beem", "-r", "20", "-d", "2"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    if "Traceback" in got.stderr:
        return f"exit {got.returncode}, traceback ({got.stderr.strip().splitlines()[-1][:60]})"
    return f"exit {got.returncode}, table" if "ok/req" in got.stdout else f"exit {got.returncode}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", required=True, help="label=checkout directory")
    ap.add_argument("--artifacts", default="/tmp/eeserve-reliability-arts")
    ap.add_argument("--wait", type=float, default=15.0, help="give up on a connection after")
    ap.add_argument("--json")
    args = ap.parse_args()
    repos = [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in args.repo]
    text, _cap = ensure_artifacts(Path(args.artifacts), repos[-1][1])
    results: dict[str, dict[str, Any]] = {}
    os.environ["EESERVE_SHUTDOWN_GRACE_S"] = "1"  # the servers below inherit it
    for label, repo in repos:
        live = Live(repo, [text], Path(f"/tmp/reliability-inputs-{label}.log"))
        try:
            got: dict[str, Any] = {"inputs": probe_inputs(live.url),
                                   "connections": probe_connections(live.port, args.wait),
                                   "bench": probe_bench(repo, live.url)}
            got["shutdown"] = probe_shutdown(live)
        finally:
            if live.proc.poll() is None:
                live.stop()
        log = Path(f"/tmp/reliability-inputs-{label}.log").read_text()
        got["tracebacks_in_log"] = log.count("Traceback")
        results[label] = got
        print(json.dumps({"code": label, **got}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
