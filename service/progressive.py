"""Serving while models are still being built: an `EngineClient` that adds them as they come.

`ProgressiveEngine` wraps the engine and a `Builder` (service/building.py): `models()` lists the
loaded models and, for each model still building, one with `ready=False` and
`details["build"]` (state, stage, step/total, seconds left, one human line); `ready()` stays false
until every build is served. Requests are gated per model (`require_model`): a model answers as
soon as it is loaded, while the others build (or failed). Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from service.building import Builder, BuildJob
from service.protocol import (
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    ClassifyRequest,
    ClassifyResult,
    EngineClient,
    EngineStatus,
    ModelInfo,
    NotReady,
    ResolvedNames,
    Task,
)

log = logging.getLogger("eeserve.build")


class GrowingEngine(EngineClient, Protocol):
    """An engine that can serve one more artifact after start (service.engine does)."""

    async def add_model(self, path: str) -> None: ...


class ProgressiveEngine:
    """`inner` serves what is loaded; `jobs` are built in order and added when finished."""

    def __init__(self, inner: GrowingEngine, jobs: list[BuildJob], device: str = "auto",
                 on_added: Callable[[list[ModelInfo]], None] | None = None,
                 python: str | None = None):
        self.inner = inner
        self.on_added = on_added
        extra: dict[str, Any] = {"python": python} if python else {}
        self.builder = Builder(jobs, self._built, device=device, **extra)

    async def _built(self, job: BuildJob) -> None:
        await self.inner.add_model(str(job.out))
        if self.on_added is not None:
            self.on_added(self.inner.models())

    async def start(self) -> None:
        await self.inner.start()
        self.builder.start()  # after start: the worker's warm-up has seen the loaded models

    async def shutdown(self, grace_s: float = 10.0) -> None:
        await self.builder.stop()
        await self.inner.shutdown(grace_s)

    def ready(self) -> bool:
        return self.inner.ready() and not self.builder.waiting()

    def models(self) -> list[ModelInfo]:
        return self.inner.models() + self.builder.infos()

    def status(self) -> EngineStatus:
        return self.inner.status()

    async def reset_retuning(self, model: str) -> int:
        return await self.inner.reset_retuning(model)

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        return self.inner.resolve(task, model, policy)

    async def classify(self, req: ClassifyRequest) -> list[ClassifyResult]:
        return await self.inner.classify(req)

    async def caption(self, req: CaptionRequest) -> list[CaptionResult]:
        return await self.inner.caption(req)

    def caption_stream(self, req: CaptionRequest) -> AsyncIterator[CaptionEvent]:
        return self.inner.caption_stream(req)


def building(m: ModelInfo) -> bool:
    """A model that is being built (or whose build failed), not one that failed to load."""
    return "build" in m.details


def build_line(m: ModelInfo) -> str:
    return f"{m.name}: {m.details['build']['line']}" if building(m) else m.name


def require_model(engine: EngineClient, model: str | None, kind: str) -> None:
    """503 unless the model a request names (or the first ready one of `kind`) can answer now.

    Readiness is per model: a model that failed to load, or is still building, answers 503
    with its reason while the others serve. An unknown name passes (the engine answers 404
    naming the loaded models)."""
    if engine.ready():
        return
    infos = engine.models()
    if model is not None:
        named = [m for m in infos if m.name == model]
        if not named or any(m.ready for m in named):
            return
        raise NotReady(f"model {model!r} is not ready: " + not_ready_line(named[0]))
    if any(m.ready for m in infos if m.kind == kind):
        return
    waits = [m for m in infos if not m.ready and m.kind in (kind, "unknown")] or \
        [m for m in infos if not m.ready]
    if not waits:
        raise NotReady("models are not loaded yet")
    raise NotReady(f"no {kind} model is ready yet; " + "; ".join(
        f"{m.name}: {not_ready_line(m)}" for m in waits))


def not_ready_line(m: ModelInfo) -> str:
    """Why a model does not answer: its build's progress, its load error, or "not loaded"."""
    if building(m):
        return str(m.details["build"]["line"])
    return f"failed to load: {m.error}" if m.error else "not loaded yet"
