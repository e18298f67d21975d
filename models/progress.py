"""Build progress for whoever waits on a build: one small JSON file, replaced atomically.

The training loops and recipes call `stage(...)` and `step(...)` unconditionally; both do nothing
unless a progress file was configured (`configure(path)`, or the `EESERVE_PROGRESS_FILE`
environment variable). `eeserve serve` runs a missing default model's build in a subprocess with
that variable set and reads the file (`read`) to answer /readyz and /v1/models while it waits.

File contents (`Progress`): the current stage as a short human line, the step and total of the
stage when it counts steps, the stage's own estimate of seconds left, and when it was written.
Torch-free, so the HTTP layer can read it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ENV = "EESERVE_PROGRESS_FILE"
MIN_INTERVAL_S = 1.0  # rewrite the file at most this often within one stage


@dataclass(frozen=True)
class Progress:
    stage: str  # e.g. "training", "caching exit logits"
    step: int | None = None  # steps done in this stage, when it counts steps
    total: int | None = None
    stage_eta_s: float | None = None  # seconds this stage still needs (None: unknown)
    stage_elapsed_s: float = 0.0
    updated_at: float = 0.0  # time.time() of the write

    def line(self) -> str:
        """`training step 310/1060` or just the stage."""
        if self.step is not None and self.total:
            return f"{self.stage} step {self.step}/{self.total}"
        return self.stage


class _Reporter:
    def __init__(self) -> None:
        self.path: Path | None = None
        self.lock = threading.Lock()
        self.stage = ""
        self.started = time.monotonic()
        self.first_step = 0  # steps already done when the stage was first seen
        self.last_write = 0.0

    def configure(self, path: str | Path | None) -> None:
        with self.lock:
            self.path = Path(path) if path else None
            self.stage, self.last_write = "", 0.0

    def report(self, stage: str, n: int | None, total: int | None,
               limit_s: float | None) -> None:
        if self.path is None:
            return
        with self.lock:
            t = time.monotonic()
            fresh = stage != self.stage
            if fresh:
                self.stage, self.started, self.first_step = stage, t, n or 0
            elif t - self.last_write < MIN_INTERVAL_S and not (n is not None and n == total):
                return
            elapsed = t - self.started
            eta = _eta(elapsed, None if n is None else n - self.first_step, total, n, limit_s)
            _write(self.path, Progress(stage, n, total, eta, round(elapsed, 1), time.time()))
            self.last_write = t


def _eta(elapsed: float, timed: int | None, total: int | None, n: int | None,
         limit_s: float | None) -> float | None:
    """Seconds left at the pace of the `timed` steps seen so far, capped by the time limit."""
    eta = None
    if timed and total and n is not None:
        eta = elapsed / timed * max(0, total - n)
    if limit_s is not None:
        left = max(0.0, limit_s - elapsed)
        eta = left if eta is None else min(eta, left)
    return None if eta is None else round(eta, 1)


def _write(path: Path, p: Progress) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(asdict(p)))
        os.replace(tmp, path)  # readers never see half a file
    except OSError:  # progress is advisory; a full disk must not fail the build
        pass


_REPORTER = _Reporter()
_REPORTER.configure(os.environ.get(ENV))


def configure(path: str | Path | None) -> None:
    """Write progress to `path` from now on (None: stop)."""
    _REPORTER.configure(path)


def stage(text: str) -> None:
    """A stage that counts no steps (downloading, caching logits, calibrating)."""
    _REPORTER.report(text, None, None, None)


def step(stage_name: str, n: int, total: int, limit_s: float | None = None) -> None:
    """`n` of `total` steps of `stage_name` done; `limit_s`: the stage's own time bound."""
    _REPORTER.report(stage_name, n, total, limit_s)


def read(path: str | Path) -> Progress | None:
    """The last progress written to `path`, or None when there is none (yet) or it is garbled."""
    try:
        raw = json.loads(Path(path).read_text())
        return Progress(**{k: raw[k] for k in Progress.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError):
        return None
