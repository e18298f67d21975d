"""Start a real `eeserve serve` (uvicorn) on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_server(models: list[Path], log: Path, env: dict[str, str] | None = None,
                 *args: str, wait_ready: bool = True, timeout: float = 180) -> Server:
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    cmd = [sys.executable, "-m", "service", "serve", *map(str, models), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--plain-logs", *args]
    fh = log.open("w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=full_env)
    server = Server(proc, port, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            r = httpx.get(f"{server.url}/readyz" if wait_ready else f"{server.url}/healthz",
                          timeout=1)
            if r.status_code == 200 or (not wait_ready and r.status_code < 500):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {timeout}s: {log.read_text()[-2000:]}")
