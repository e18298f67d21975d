"""Probes that are not about speed: malformed inputs, stalled connections, shutdown, CLI.

Issue 19 before/after: malformed JSON inputs on /v1 and /v2, stalled and idle connections,
a request cut by the shutdown grace (EESERVE_SHUTDOWN_GRACE_S=1 for the servers started here),
`eeserve bench --duration`. A fresh `eeserve serve` of each `--repo` checkout (its own code) on
the tiny-text artifact (tiny-text and tiny-caption built into --artifacts when missing, by the
last checkout). Loopback only, bounded (each connection probe gives up after --wait seconds).

    git worktree add --detach /work/wt-relin-before f6bf745
    EESERVE_TIMEOUT_HEADERS_S=5 EESERVE_TIMEOUT_BODY_S=5 EESERVE_TIMEOUT_KEEP_ALIVE_S=5 \\
    python -m bench.reliability.inputs --repo before=/work/wt-relin-before --repo after=$PWD \\
        --wait 15 --json docs/figures/reliability_inputs.json
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

from bench.harness import HOST, Server, record
from bench.reliability._common import ensure_artifacts, parse_repos, serve_checkout

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
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
    with socket.create_connection((HOST, port), timeout=wait) as sock:
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


def probe_shutdown(server: Server) -> str:
    """A request still reading its body when SIGTERM's grace (1 s) ends."""
    sock = socket.create_connection((HOST, server.port), timeout=30)
    sock.sendall(HEAD + b"content-length: 100\r\n\r\n{\"in")
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    sock.close()
    server.proc.wait(30)
    head, _, body = got.partition(b"\r\n\r\n")
    kind = "JSON" if body.startswith(b"{") else "plain text"
    rid = "with request id" if b"request_id" in body else "no request id"
    return f"{head[9:12].decode()} {kind}, {rid}"


def probe_bench(repo: Path, url: str) -> str:
    """`eeserve bench --duration` of the checkout against its own server."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    got = subprocess.run([sys.executable, "-m", "service", "bench", url, "--dataset", "tiny",
                          "-p", "beem", "-r", "20", "-d", "2"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    if "Traceback" in got.stderr:
        return f"exit {got.returncode}, traceback ({got.stderr.strip().splitlines()[-1][:60]})"
    return f"exit {got.returncode}, table" if "ok/req" in got.stdout else f"exit {got.returncode}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.inputs",
                                 description=DESCRIPTION)
    ap.add_argument("--repo", action="append", required=True, help="label=checkout directory")
    ap.add_argument("--artifacts", default="/tmp/eeserve-reliability-arts")
    ap.add_argument("--wait", type=float, default=15.0, help="give up on a connection after")
    ap.add_argument("--json", type=Path, help="write the run's record here")
    args = ap.parse_args(argv)
    repos = parse_repos(args.repo)
    text, _cap = ensure_artifacts(Path(args.artifacts), repos[-1][1])
    results: dict[str, dict[str, Any]] = {}
    os.environ["EESERVE_SHUTDOWN_GRACE_S"] = "1"  # the servers below inherit it
    for label, repo in repos:
        log = Path(f"/tmp/reliability-inputs-{label}.log")
        server = serve_checkout(repo, [text], log)
        try:
            got: dict[str, Any] = {"inputs": probe_inputs(server.url),
                                   "connections": probe_connections(server.port, args.wait),
                                   "bench": probe_bench(repo, server.url)}
            got["shutdown"] = probe_shutdown(server)
        finally:
            server.stop()  # a no-op once the shutdown probe ended it
        got["tracebacks_in_log"] = log.read_text().count("Traceback")
        results[label] = got
        print(json.dumps({"code": label, **got}), flush=True)
    record("reliability.inputs", args.json, results, repos={k: str(v) for k, v in repos},
           wait_s=args.wait, timeouts={k: v for k, v in os.environ.items()
                                       if k.startswith("EESERVE_TIMEOUT_")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
