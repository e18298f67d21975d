"""Start a real `eeserve serve` (uvicorn) on 127.0.0.1 for end-to-end tests, through the same
harness every benchmark uses (bench/harness.py)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from bench.harness import ROOT, Server, free_port, serve

__all__ = ["ROOT", "Server", "free_port", "sigterm_during_load", "start_server"]


def start_server(models: list[Path], log: Path, env: dict[str, str] | None = None,
                 *args: str, wait_ready: bool = True, timeout: float = 180) -> Server:
    """`eeserve serve MODELS ARGS` on a free port; waits for /readyz (or, without
    `wait_ready`, for any answer below 500)."""
    return serve(models, log, *args, env=env, any_answer=not wait_ready, timeout=timeout)


def sigterm_during_load(s: Server, texts: list[str], clients: int = 8) -> list[str]:
    """`clients` classify requests of `texts` at once, SIGTERM half a second in; each
    request's outcome: its status, "not-accepted" (refused connection) or "lost:ERROR"."""
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            r = httpx.post(f"{s.url}/v1/classify", json={"inputs": texts, "policy": "none"},
                           timeout=60)
            out = str(r.status_code)
        except httpx.ConnectError:
            out = "not-accepted"
        except httpx.HTTPError as e:
            out = f"lost:{type(e).__name__}"
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=call) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(90)
    return outcomes
