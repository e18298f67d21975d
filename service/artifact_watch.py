"""Whether each served model's artifact directory is still the one it was loaded from.

A loaded model answers from memory (weights, tokenizer and ONNX Runtime sessions are read at
load), so removing or replacing its directory under a running server does not stop it; but the
next start, or an engine process that is replaced (`--workers N`), loads what is on disk then.
`ArtifactWatch` stats each served model's manifest.json every `interval_s` (one `os.stat` per
model: device, inode, modification time, size) against what it saw when the model first served,
logs one warning when that changes, and gives /readyz and /v1/models the state (`annotate`):
`removed` (no manifest there now) or `changed` (rewritten, or the directory replaced). The
model keeps serving either way. Torch-free: it runs in the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from service.protocol import ModelInfo

log = logging.getLogger("eeserve.artifacts")
MANIFEST = "manifest.json"  # models.artifact.MANIFEST (not imported: that module needs torch)

State = Literal["unchanged", "removed", "changed"]


@dataclass(frozen=True)
class Stamp:
    """What identifies one write of a manifest: a replaced directory or a rewritten manifest
    (written to a temporary file and renamed over it) has another inode."""

    device: int
    inode: int
    mtime_ns: int
    size: int


def stamp_of(path: str) -> Stamp | None:
    """The stamp of `path`/manifest.json now; None when there is none (the directory gone)."""
    try:
        st = os.stat(Path(path) / MANIFEST)
    except OSError:
        return None
    return Stamp(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class Watched:
    """One served model's directory: its stamp when first seen serving, and its state since."""

    model: str
    path: str
    loaded: Stamp | None
    loaded_at: float  # time.time() when first seen serving
    state: State = "unchanged"
    since: float | None = None  # time.time() when the state was first seen

    def line(self) -> str | None:
        """`removed: ...` or `changed: ...`, one line; None while unchanged."""
        if self.state == "removed":
            return (f"removed: {self.path} is gone from disk since the model was loaded; it "
                    f"still serves from memory, but a restart cannot load it from there (a "
                    f"missing default model is rebuilt)")
        if self.state == "changed":
            loaded = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.loaded_at))
            return (f"changed: {self.path} on disk is not what was loaded (its manifest was "
                    f"rewritten or the directory replaced); the model loaded at {loaded} still "
                    f"serves from memory, a restart serves the new one")
        return None

    def details(self) -> dict[str, Any]:
        """The `artifact` entry of the model's /v1/models details."""
        since = None if self.since is None else round(self.since, 3)
        return {"state": self.state, "since": since, "line": self.line()}


def state_now(w: Watched) -> State:
    """The directory's state by its manifest's stamp now."""
    now = stamp_of(w.path)
    if now is None:
        return "removed"
    return "unchanged" if now == w.loaded else "changed"


class ArtifactWatch:
    """Checks the directories of what `models()` lists as serving; `annotate` adds the state."""

    def __init__(self, models: Callable[[], list[ModelInfo]], interval_s: float = 5.0):
        self.models = models
        self.interval_s = interval_s
        self.watched: dict[tuple[str, str], Watched] = {}  # (model, path) -> its directory
        self._task: asyncio.Task[None] | None = None

    def check(self) -> list[Watched]:
        """Stat every served model's directory (a model seen for the first time is stamped);
        logs, and returns, those whose state changed since the last check."""
        changed: list[Watched] = []
        for m in self.models():
            path = m.details.get("path")
            if not m.ready or not isinstance(path, str):
                continue
            w = self.watched.get((m.name, path))
            if w is None:
                stamp = stamp_of(path)
                w = self.watched[(m.name, path)] = Watched(m.name, path, stamp, time.time())
                if stamp is not None:
                    continue  # a missing manifest at first sight is reported below
            state = state_now(w)
            if state != w.state:
                w.state, w.since = state, time.time()
                changed.append(w)
                _log(w)
        return changed

    def annotate(self, infos: list[ModelInfo]) -> list[ModelInfo]:
        """`infos` with `details["artifact"]` (state, since, line) on each watched model."""
        out = []
        for m in infos:
            w = self.watched.get((m.name, str(m.details.get("path"))))
            out.append(m if w is None or not m.ready else
                       replace(m, details={**m.details, "artifact": w.details()}))
        return out

    def start(self) -> None:
        """The first check now (every served model's stamp), then one every `interval_s`
        (no checks with `interval_s` 0)."""
        if self.interval_s <= 0:
            return
        self.check()
        self._task = asyncio.get_running_loop().create_task(self._every())

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 -- a check that fails must not stop serving
                log.warning("artifact check failed", extra={"error": f"{type(e).__name__}: {e}"})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _log(w: Watched) -> None:
    if w.state == "unchanged":  # put back as it was loaded (a copy with the same inode)
        log.info("artifact directory is as loaded again", extra={"model": w.model,
                                                                  "path": w.path})
        return
    log.warning("artifact directory %s since the model was loaded: still serving the loaded "
                "copy", w.state, extra={"model": w.model, "path": w.path, "state": w.state,
                                        "detail": w.line()})
