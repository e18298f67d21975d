"""A torch-free engine with deterministic answers (infinity's `debugengine` idea)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from policies.names import known_policy
from service.protocol import (
    BadRequest,
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    ClassifyRequest,
    ClassifyResult,
    EngineError,
    EngineStatus,
    ModelInfo,
    NotReady,
    ResolvedNames,
    Task,
    UnknownModel,
)


class FakeEngine:
    """Label = text length parity; exit layer = 1 + len(words) capped at 4."""

    def __init__(self, ready: bool = True, error: EngineError | None = None,
                 delay_s: float = 0.0):
        self._ready_after_start = ready
        self._ready = False
        self.error = error
        self.delay_s = delay_s
        self.requests: list[ClassifyRequest] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True
        self._ready = self._ready_after_start

    async def shutdown(self, grace_s: float = 10.0) -> None:
        self.stopped = True
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name="fake", kind="text-classifier", ready=self._ready, num_exits=4,
                          labels=["even", "odd"], default_policy="beem",
                          policies={"beem": {"thresholds": [1.0, 1.0, 1.0, 1.0]}},
                          per_layer_ms={"1": [1.0, 1.0, 1.0, 1.0]},
                          error=None if self._ready else "still loading")]

    def status(self) -> EngineStatus:
        return EngineStatus(queue_depth=0, active_rows=0, loaded_models=1)

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        if task != "text-classifier" or model not in (None, "fake"):
            return ResolvedNames(None, known_policy(policy))
        return ResolvedNames("fake", known_policy(policy or "beem"))

    async def classify(self, req: ClassifyRequest) -> list[ClassifyResult]:
        self.requests.append(req)
        if self.error is not None:
            raise self.error
        if req.model not in (None, "fake"):
            raise UnknownModel(f"unknown model {req.model!r}", "model")
        if req.policy == "eenet":
            raise BadRequest("eenet: not calibrated", "policy")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = []
        for t in req.texts:
            lid = len(t) % 2
            out.append(ClassifyResult(
                label=["even", "odd"][lid], label_id=lid,
                probabilities=[0.25, 0.75] if lid else [0.75, 0.25],
                exit_layer=min(4, len(t.split())), num_layers=4, confidence=0.75,
                budget_forced=req.latency_budget_ms is not None, truncated=False,
                queue_ms=0.5, compute_ms=1.0, total_ms=1.5))
        return out

    async def caption(self, req: CaptionRequest) -> list[CaptionResult]:
        raise NotReady("no captioner")

    async def reset_retuning(self, model: str) -> int:
        if model not in {m.name for m in self.models()}:
            raise UnknownModel(f"unknown model {model!r}", "name")
        return 0

    async def caption_stream(self, req: CaptionRequest) -> AsyncIterator[CaptionEvent]:
        raise NotReady("no captioner")
        yield  # pragma: no cover
