"""Builds of missing default models, run one after another in a subprocess while the server
already answers. Torch-free.

`eeserve serve` with no directory serves what is built and hands the rest to a `Builder`: each
job runs `python -m tools.build_worker` (nice 10, its own torch threads and GIL), which
writes a small progress file (models/progress.py) and renames its staging directory to the
artifact directory when complete. The builder polls that file once a second for /readyz,
/v1/models and the playground page, and hands each finished artifact to `on_built` (the engine
loads it and serves it from then on). A failed build is reported with why its process ended
(`exit_reason`: killed by a signal, no space left on device, else the last line of its log), and
its staging directory is removed by the server (a worker killed with SIGKILL cannot clean up)
unless another process holds the build's lock (`lock_file`): it is that process's build.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models import progress as build_progress
from service.protocol import ModelInfo

log = logging.getLogger("eeserve.build")
# the module each build runs in (a subprocess: the server never imports the build code)
WORKER_MODULE = "tools.build_worker"
POLL_S = 1.0
LOG_EVERY_S = 60.0  # a progress line in the server log at least this often

State = Literal["queued", "building", "loading", "done", "failed"]
# the worker's exit status when a write of the build failed with ENOSPC (errno 28), so the
# server can name the cause even when the disk was too full for the log to say it
EXIT_NO_SPACE = 28
# the worker's last log line when it names why it failed (`exit_reason` quotes what follows)
FAILED_PREFIX = "[eeserve] build failed: "


@dataclass(frozen=True)
class BuildJob:
    name: str  # the model name the artifact serves under
    recipe: str
    kind: str  # "text-classifier" or "captioner"
    out: Path
    estimate_s: float  # a whole build on the reference CPU (docs/benchmarks/reliability.md)
    after_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds that follow it

    @property
    def staging(self) -> Path:
        return staging_dir(self.out)

    @property
    def progress_file(self) -> Path:
        return self.out.parent / f".{self.out.name}.progress.json"

    @property
    def log_file(self) -> Path:
        return self.out.parent / f"{self.out.name}.build.log"


def staging_dir(out: Path) -> Path:
    """Where a build writes before it is complete (renamed to `out` at the end)."""
    return out.parent / f".{out.name}.building"


def lock_file(out: Path) -> Path:
    """Held (flock) by the process building `out`: one build of it at a time (the kernel lets
    go of it when that process dies, SIGKILL included, so it is never left stale)."""
    return out.parent / f".{out.name}.lock"


def remove_staging(out: Path) -> bool:
    """Remove the staging directory a failed build of `out` left (a worker killed with SIGKILL
    cannot), unless another process holds the lock: then it is that process's build under way.
    True when a staging directory was removed."""
    staging = staging_dir(out)
    if not staging.exists():
        return False
    try:
        fh = lock_file(out).open("a")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by another build of `out`
            return False
        shutil.rmtree(staging, ignore_errors=True)
        fcntl.flock(fh, fcntl.LOCK_UN)
    return not staging.exists()


def exit_reason(rc: int, stage: str | None, log_file: Path) -> str:
    """Why a build's process ended with status `rc` (not 0), in one line: the signal that
    killed it and the stage it was in, the worker's own line (no space left on device), or the
    exit status and the last line of its log."""
    last = _last_line(log_file)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = "unknown signal"
        during = f" during {stage!r}" if stage else ""
        return f"build process killed by signal {-rc} ({name}){during}"
    if last.startswith(FAILED_PREFIX):
        return last.removeprefix(FAILED_PREFIX)
    if rc == EXIT_NO_SPACE:  # the disk was too full for the worker to write its line
        return f"no space left on device (under {log_file.parent})"
    return f"exit status {rc}: {last}"


@dataclass
class BuildState:
    job: BuildJob
    state: State = "queued"
    progress: build_progress.Progress | None = None
    started: float | None = None  # time.monotonic()
    error: str | None = None
    trained: bool = False  # a training stage was seen (what follows it has no estimate)

    def eta_s(self) -> float | None:
        """Seconds until this build is served: the stage's own estimate plus what follows it;
        before training, the measured whole-build time less the time spent."""
        if self.state == "queued":
            return self.job.estimate_s
        if self.state != "building":
            return None
        p = self.progress
        if p is not None and p.stage_eta_s is not None:
            return p.stage_eta_s + _after(self.job.after_s, p.stage)
        if self.trained:
            return None
        spent = time.monotonic() - (self.started or time.monotonic())
        return max(self.job.estimate_s - spent, max(self.job.after_s.values(), default=60.0))

    def line(self, eta_s: float | None = None) -> str:
        """One human line: `training step 310/1060, ~12 min left`."""
        if self.state == "failed":
            return f"build failed: {self.error}"
        if self.state == "queued":
            what = "queued"
        elif self.state == "loading":
            what = "built; loading"
        else:
            what = self.progress.line() if self.progress else "starting"
        return what if eta_s is None else f"{what}, {_minutes(eta_s)} left"

    def info(self, eta_s: float | None) -> ModelInfo:
        p = self.progress
        build = {"state": self.state, "stage": p.stage if p else None,
                 "step": p.step if p else None, "total": p.total if p else None,
                 "eta_s": None if eta_s is None else round(eta_s), "line": self.line(eta_s),
                 "log": str(self.job.log_file)}
        return ModelInfo(name=self.job.name, kind=self.job.kind, ready=False, error=(
            f"build failed: {self.error}" if self.state == "failed" else None),
            details={"build": build, "path": str(self.job.out)})


def _after(after_s: dict[str, float], stage: str) -> float:
    keys = [k for k in after_s if stage.startswith(k)]
    return after_s[max(keys, key=len)] if keys else 0.0


def _minutes(s: float) -> str:
    return f"~{max(1, round(s / 60))} min" if s >= 60 else f"~{max(1, round(s))} s"


class Builder:
    """Runs `jobs` in order in subprocesses; `on_built(job)` serves each finished artifact."""

    def __init__(self, jobs: list[BuildJob], on_built: Callable[[BuildJob], Awaitable[None]],
                 device: str = "auto", python: str = sys.executable):
        self.states = [BuildState(j) for j in jobs]
        self.on_built = on_built
        self.device = device
        self.python = python
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_all())

    def waiting(self) -> list[tuple[BuildState, float | None]]:
        """Builds not yet handed to the engine, each with its time to serving (a queued build
        waits for the ones before it)."""
        out: list[tuple[BuildState, float | None]] = []
        before = 0.0
        for st in self.states:
            if st.state == "done":
                continue
            if st.state == "failed":
                out.append((st, None))
                continue
            eta = st.eta_s()  # never None while queued
            out.append((st, None if eta is None else before + eta))
            before += eta or 0.0
        return out

    def infos(self) -> list[ModelInfo]:
        return [st.info(eta) for st, eta in self.waiting()]

    def summary(self) -> str:
        return "; ".join(f"{st.job.name}: {st.line(eta)}" for st, eta in self.waiting())

    async def _run_all(self) -> None:
        for st in self.states:
            try:
                await self._build(st)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- reported in /readyz; the next build goes on
                st.state, st.error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
                log.error("build failed", extra={"model": st.job.name, "error": st.error})

    async def _build(self, st: BuildState) -> None:
        job = st.job
        job.out.parent.mkdir(parents=True, exist_ok=True)
        job.progress_file.unlink(missing_ok=True)
        st.state, st.started = "building", time.monotonic()
        log.info("building a missing model while serving",
                 extra={"model": job.name, "recipe": job.recipe, "log": str(job.log_file)})
        with job.log_file.open("w") as fh:
            self._proc = await asyncio.create_subprocess_exec(
                self.python, "-m", WORKER_MODULE, job.recipe, str(job.out),
                "--device", self.device, stdout=fh, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, build_progress.ENV: str(job.progress_file),
                     "TOKENIZERS_PARALLELISM": "false"})
            rc = await self._follow(st, self._proc)
        self._proc = None
        if rc != 0:
            await self._failed(st, rc)
            return
        st.state = "loading"
        log.info("build finished; loading", extra={"model": job.name,
                                                    "seconds": round(time.monotonic() -
                                                                     (st.started or 0), 1)})
        await self.on_built(job)
        st.state = "done"
        job.progress_file.unlink(missing_ok=True)

    async def _failed(self, st: BuildState, rc: int) -> None:
        """A build whose process ended with `rc` != 0: its reason, its staging directory and
        progress file removed, one log line."""
        job = st.job
        removed = await asyncio.to_thread(remove_staging, job.out)
        job.progress_file.unlink(missing_ok=True)
        reason = exit_reason(rc, st.progress.stage if st.progress else None, job.log_file)
        st.state, st.error = "failed", f"{reason} (log: {job.log_file})"
        log.error("build failed", extra={"model": job.name, "error": st.error,
                                         "exit_status": rc, "staging_removed": removed})

    async def _follow(self, st: BuildState, proc: asyncio.subprocess.Process) -> int:
        last_line, last_log = "", 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(proc.wait(), POLL_S)
            p = build_progress.read(st.job.progress_file)
            if p is not None:
                st.progress = p
                st.trained = st.trained or p.stage.startswith("training")
            line = st.progress.stage if st.progress else ""
            if line != last_line or time.monotonic() - last_log > LOG_EVERY_S:
                log.info("build progress", extra={"model": st.job.name,
                                                  "progress": st.line(st.eta_s())})
                last_line, last_log = line, time.monotonic()

    async def stop(self) -> None:
        """Cancel the builds: the running subprocess is terminated (it removes its staging)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for st in self.states:
            if st.state == "building":
                st.job.progress_file.unlink(missing_ok=True)


def _last_line(path: Path) -> str:
    """The last non-empty line of a build log (tqdm's carriage returns split lines too)."""
    try:
        text = path.read_text(errors="replace")[-8000:]
    except OSError:
        return "no log"
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"
