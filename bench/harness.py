"""The one harness every benchmark (and tests/e2e) uses to run servers and measure them.

- `free_port()`, `start(...)` / `serve(...)` / `peer(...)`: launch a server or a peer on
  127.0.0.1 as a subprocess, wait until its readiness route answers 200 (or, with
  `wait_ready=False`, until it answers at all), and hand back a `Server` that stops cleanly.
- `Server.cpu_seconds()` / `Server.rss_mb()`: the process *tree*'s CPU seconds and resident
  memory from /proc (a server with worker processes counts them all).
- `scrape(url)`: a server's /metrics as {sample name with labels: value}.
- `run_k6(...)`: a k6 script from bench/k6/ with its environment, summary export parsed.
- `machine()` and `record(...)`: what a result was measured on (CPU model, cores, affinity,
  commit, the answer-shaping library versions) and one JSON record per benchmark run with the
  backend, precision, threads and workers it ran with.

Loopback only: every address here is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from models.environment import versions

ROOT = Path(__file__).resolve().parents[1]
K6_DIR = Path(__file__).resolve().parent / "k6"
HOST = "127.0.0.1"
QUIET_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_mb(pid: int, key: str = "VmRSS") -> float:
    """A /proc/PID/status memory field (VmRSS, VmHWM, ...) in MiB; nan when absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:`port` (eeserve, a peer, or a third-party server)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    kind: str = "eeserve"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid, *_children(self.proc.pid)]

    def cpu_seconds(self) -> float:
        """CPU seconds of the server and every process under it (worker processes counted)."""
        return sum(proc_cpu_seconds(p) for p in self.pids())

    def rss_mb(self, key: str = "VmRSS") -> dict[int, float]:
        """Resident memory per process of the tree, MiB."""
        return {p: proc_status_mb(p, key) for p in self.pids()}

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server, wait up to `timeout` s, then kill it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


class ServerError(RuntimeError):
    """A server that exited or never became ready; the message ends with its log's tail."""


def wait_ready(server: Server, route: str = "/readyz", timeout: float = 900,
               any_answer: bool = False) -> Server:
    """Poll `route` until 200 (or, with `any_answer`, any status below 500)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise ServerError(f"{server.name} exited {server.proc.returncode}: "
                              f"{server.log_tail()}")
        try:
            r = httpx.get(server.url + route, timeout=2, trust_env=False)
            if r.status_code == 200 or (any_answer and r.status_code < 500):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise ServerError(f"{server.name} not ready in {timeout:.0f}s: {server.log_tail()}")


def start(name: str, cmd: Sequence[str], log: Path, *, kind: str = "eeserve",
          ready: str = "/readyz", env: Mapping[str, str] | None = None,
          port: int | None = None, port_flag: str | None = "--port", wait: bool = True,
          any_answer: bool = False, timeout: float = 900) -> Server:
    """Launch `cmd` (with `port_flag PORT` appended) logging to `log`, and wait for it."""
    port = port or free_port()
    full = [*cmd, *([port_flag, str(port)] if port_flag else [])]
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(full, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **QUIET_ENV,
                                 **(env or {})})
    server = Server(name, proc, port, log, kind)
    return wait_ready(server, ready, timeout, any_answer) if wait else server


def eeserve(*args: str) -> list[str]:
    """The `eeserve` command of this interpreter (works without the console script)."""
    return [sys.executable, "-m", "service", *args]


def serve(models: Sequence[str | Path], log: Path, *args: str, name: str = "eeserve",
          env: Mapping[str, str] | None = None, wait: bool = True, any_answer: bool = False,
          timeout: float = 900) -> Server:
    """`eeserve serve MODELS... --host 127.0.0.1 --device cpu --plain-logs ARGS`; waits for
    /readyz, or with `any_answer` for /healthz (alive, whatever its models' state)."""
    cmd = eeserve("serve", *map(str, models), "--host", HOST, "--device", "cpu",
                  "--plain-logs", *args)
    return start(name, cmd, log, ready="/healthz" if any_answer else "/readyz", env=env,
                 wait=wait, any_answer=any_answer, timeout=timeout)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    """Stop the server on leaving the block, whatever happened in it."""
    try:
        yield server
    finally:
        server.stop()


def scrape(url: str) -> dict[str, float]:
    """`url`/metrics as {'name{label="v",...}': value} (labels sorted; no labels: the name)."""
    text = httpx.get(url.rstrip("/") + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def k6_binary() -> str:
    local = Path(sys.executable).parent / "k6"
    return str(local) if local.exists() else "k6"


def run_k6(script: str, env: Mapping[str, str], summary: Path,
           timeout: float | None = None) -> dict[str, Any]:
    """Run bench/k6/`script` with `env`; its exported summary's metrics."""
    subprocess.run([k6_binary(), "run", "--quiet", "--no-usage-report", "--summary-export",
                    str(summary), str(K6_DIR / script)], env={**os.environ, **env},
                   check=True, stdout=subprocess.DEVNULL, timeout=timeout)
    metrics: dict[str, Any] = json.loads(summary.read_text())["metrics"]
    return metrics


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What a figure was measured on."""
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "commit": _commit(), "versions": versions()}


@dataclass
class Record:
    """One benchmark run: what ran, on what, with which settings, and what it measured."""

    benchmark: str
    command: list[str] = field(default_factory=lambda: [sys.executable, *sys.argv])
    settings: dict[str, Any] = field(default_factory=dict)  # backend, precision, threads, ...
    results: Any = None
    machine: dict[str, Any] = field(default_factory=machine)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2, default=str) + "\n")
        return path


def record(benchmark: str, path: Path | None, results: Any, **settings: Any) -> Record:
    """Build the run's record and write it to `path` when given (the usual `--json F`)."""
    rec = Record(benchmark, settings=settings, results=results)
    if path is not None:
        rec.write(path)
    return rec
