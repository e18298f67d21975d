"""InProcessEngine: the names a request runs under, and deadlines counted from receipt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.engine import EngineConfig, InProcessEngine
from service.protocol import ClassifyRequest, DeadlineExceeded, Overloaded, ResolvedNames


async def test_resolve_uses_the_served_models_and_their_defaults(tiny_artifact: Path) -> None:
    eng = InProcessEngine(EngineConfig(models=(str(tiny_artifact),), device="cpu",
                                       default_policy="entropy", torch_threads=1))
    await eng.start()
    try:
        name = next(iter(eng.served))
        assert eng.resolve("text-classifier", None, None) == ResolvedNames(name, "entropy")
        assert eng.resolve("text-classifier", name, "beem") == ResolvedNames(name, "beem")
        assert eng.resolve("text-classifier", name, "bogus") == ResolvedNames(name, None)
        assert eng.resolve("text-classifier", "other", "beem") == ResolvedNames(None, "beem")
        assert eng.resolve("captioner", None, None) == ResolvedNames(None, None)
        assert eng.resolve("captioner", name, "static") == ResolvedNames(None, "static")
    finally:
        await eng.shutdown(1.0)


async def test_a_deadline_spent_before_the_engine_is_a_504_without_work(
        tiny_artifact: Path) -> None:
    eng = InProcessEngine(EngineConfig(models=(str(tiny_artifact),), device="cpu",
                                       torch_threads=1))
    await eng.start()
    try:
        late = ClassifyRequest(texts=["fine"], deadline_ms=100,
                               received_at=time.perf_counter() - 0.2)
        with pytest.raises(DeadlineExceeded, match="before the request reached the engine"):
            await eng.classify(late)
        assert eng.text_task is not None and eng.text_task.reserved_rows == 0
        on_time = ClassifyRequest(texts=["fine"], deadline_ms=5000,
                                  received_at=time.perf_counter())
        assert len(await eng.classify(on_time)) == 1
        assert eng.admission.compute_s > 0  # answered requests feed the drain estimate
    finally:
        await eng.shutdown(1.0)


async def test_deadline_admission_refuses_what_the_backlog_would_make_late(
        tiny_artifact: Path) -> None:
    eng = InProcessEngine(EngineConfig(models=(str(tiny_artifact),), device="cpu",
                                       torch_threads=1, deadline_admission=True))
    await eng.start()
    try:
        t = time.perf_counter()
        for i in range(64):  # the engine answered 64 rows a second lately
            eng.admission.answered(t - 1.0 + i / 64, 1, compute_s=0.01)
        assert eng.text_task is not None
        eng.text_task.reserved_rows = 128  # two seconds of rows ahead (being tokenised)
        try:
            with pytest.raises(Overloaded, match="over the deadline of"):
                await eng.classify(ClassifyRequest(texts=["fine"], deadline_ms=1000))
        finally:
            eng.text_task.reserved_rows = 0
        assert len(await eng.classify(ClassifyRequest(texts=["fine"], deadline_ms=1000))) == 1
    finally:
        await eng.shutdown(1.0)
