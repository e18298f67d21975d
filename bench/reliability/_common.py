"""Pieces the reliability benchmarks share: checkouts' servers, first-start servers, the
capacity probe, process samples (RSS, open files, threads per process of a server's tree) and
the settings a run's record names."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from bench.harness import HOST, Server, eeserve, proc_status_mb, serve, start

SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate",
             "an admirable but ultimately dull effort", "funny, touching and smart",
             "i walked out halfway", "a rare film that earns its tears"]


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


# ---- servers ----------------------------------------------------------------------------------
def parse_repos(given: Sequence[str]) -> list[tuple[str, Path]]:
    """`--repo label=DIR` values as (label, checkout directory)."""
    return [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in given]


def checkout_env(repo: Path) -> dict[str, str]:
    """Environment of a child that imports `repo`'s code: PYTHONPATH set to it, and
    PYTHONSAFEPATH (`python -P`) so the working directory -- this tree -- does not shadow it."""
    return {"PYTHONPATH": str(repo.resolve()), "PYTHONSAFEPATH": "1"}


def serve_checkout(repo: Path, models: Sequence[Path], log: Path, *args: str,
                   timeout: float = 180) -> Server:
    """`eeserve serve MODELS` of the checkout `repo` on a free loopback port, ready."""
    return serve(models, log, *args, env=checkout_env(repo), timeout=timeout)


def serve_port(models: Sequence[str | Path], log: Path, *args: str,
               env: Mapping[str, str] | None = None, port: int | None = None,
               timeout: float = 900) -> Server:
    """`harness.serve` on a given port (`--port` of the older scripts), else on a free one."""
    if not port:
        return serve(models, log, *args, env=env, timeout=timeout)
    cmd = eeserve("serve", *map(str, models), "--host", HOST, "--device", "cpu", "--plain-logs",
                  *args)
    return start("eeserve", cmd, log, env=env, port=port, timeout=timeout)


def ensure_artifacts(root: Path, repo: Path) -> list[Path]:
    """The tiny-text and tiny-caption artifacts under `root`, built by `repo`'s
    `eeserve train` when missing."""
    out = []
    for recipe in ("tiny-text", "tiny-caption"):
        d = root / recipe
        if not (d / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "service", "train", recipe, "--out", str(d)],
                           cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
        out.append(d)
    return out


def first_start_env(tmp: str | Path) -> dict[str, str]:
    """The default model directories pointed at an empty folder: `eeserve serve` with no model
    builds the defaults in the background (a first start)."""
    return {"EESERVE_DEFAULT_MODEL_DIR": f"{tmp}/text-default",
            "EESERVE_CAPTION_MODEL_DIR": f"{tmp}/caption-default"}


def progress_lines(url: str, timeout: float = 2) -> tuple[int, list[str]]:
    """/readyz's status and each model's build progress line ("" when it has none)."""
    r = httpx.get(url + "/readyz", timeout=timeout, trust_env=False)
    return r.status_code, [m.get("progress") or "" for m in r.json()["models"]]


def served_settings(url: str) -> dict[str, Any]:
    """Backend and precision of the server's first model (for the run's record)."""
    try:
        models = httpx.get(url + "/v1/models", timeout=10, trust_env=False).json()["models"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    details = (models[0].get("details") or {}) if models else {}
    return {"backend": details.get("backend"), "precision": details.get("precision")}


# ---- processes --------------------------------------------------------------------------------
def open_fds(pid: int) -> int | None:
    """Open file descriptors of one process (entries of /proc/PID/fd); None when unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def threads(pid: int) -> int | None:
    """Threads of one process (/proc/PID/status `Threads:`); None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def main_mb(server: Server, key: str = "VmRSS") -> float:
    """VmRSS / VmHWM of the server's own process (not its children), MiB."""
    return proc_status_mb(server.proc.pid, key)


def process_name(pid: int) -> str:
    """An engine process's `--name` (text-0, caption-0, ...), else "server" (the front, or the
    one process of `--workers 1`); a build subprocess is "build"."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"--name" in argv[:-1]:
        return argv[argv.index(b"--name") + 1].decode(errors="replace")
    return "build" if b"tools.build_worker" in argv else "server"


def process_sample(server: Server) -> dict[str, Any]:
    """RSS (MiB), open files and threads of every process of the server's tree, with totals
    and each pid's name (`process_name`)."""
    rss = {p: round(mb, 1) for p, mb in server.rss_mb().items() if mb == mb}  # nan: gone
    fds = {p: n for p in rss if (n := open_fds(p)) is not None}
    thr = {p: n for p in rss if (n := threads(p)) is not None}
    return {"processes": len(rss), "rss_mb": round(sum(rss.values()), 1),
            "fds": sum(fds.values()), "threads": sum(thr.values()),
            "rss_mb_by_pid": rss, "fds_by_pid": fds, "threads_by_pid": thr,
            "names_by_pid": {p: process_name(p) for p in rss}}


# ---- load -------------------------------------------------------------------------------------
async def post(client: httpx.AsyncClient, url: str, path: str, body: dict[str, Any],
               timeout: float) -> tuple[str, float]:
    """One POST of `body` to `url+path`: its status ("hung" on a client timeout, "lost:Error"
    on a transport error) and the client-side milliseconds."""
    t0 = time.perf_counter()
    try:
        status = str((await client.post(url + path, json=body, timeout=timeout)).status_code)
    except httpx.TimeoutException:
        status = "hung"
    except httpx.HTTPError as e:
        status = f"lost:{type(e).__name__}"
    return status, (time.perf_counter() - t0) * 1e3


async def post_classify(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                        timeout: float) -> tuple[str, float]:
    """One /v1/classify (see `post`)."""
    return await post(client, url, "/v1/classify", body, timeout)


async def capacity(client: httpx.AsyncClient, url: str, policy: str, conc: int,
                   seconds: float, path: str = "/v1/classify",
                   bodies: Sequence[dict[str, Any]] | None = None) -> float:
    """Closed loop with `conc` clients for `seconds`: answered 200s per second. `bodies`
    (sent in turn) default to the six sentences at `policy`."""
    sent = bodies or [{"inputs": s, "policy": policy} for s in SENTENCES]
    end = time.perf_counter() + seconds
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            s, _ = await post(client, url, path, sent[i % len(sent)], 30)
            done += s == "200"
            i += conc

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    return done / (time.perf_counter() - t0)


def p50(xs: Sequence[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def p99(xs: Sequence[float], min_n: int = 100) -> float | None:
    """The 99th percentile (statistics.quantiles), None under `min_n` samples."""
    return round(statistics.quantiles(xs, n=100)[98], 2) if len(xs) >= max(2, min_n) else None
