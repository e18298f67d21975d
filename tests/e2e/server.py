"""Start a real `eeserve serve` (uvicorn) on 127.0.0.1 for end-to-end tests, through the same
harness every benchmark uses (bench/harness.py)."""

from __future__ import annotations

from pathlib import Path

from bench.harness import ROOT, Server, free_port, serve

__all__ = ["ROOT", "Server", "free_port", "start_server"]


def start_server(models: list[Path], log: Path, env: dict[str, str] | None = None,
                 *args: str, wait_ready: bool = True, timeout: float = 180) -> Server:
    """`eeserve serve MODELS ARGS` on a free port; waits for /readyz (or, without
    `wait_ready`, for any answer below 500)."""
    return serve(models, log, *args, env=env, any_answer=not wait_ready, timeout=timeout)
