"""InProcessEngine.resolve: the names a request runs under come from the engine's own lookup."""

from __future__ import annotations

from pathlib import Path

from service.engine import EngineConfig, InProcessEngine
from service.protocol import ResolvedNames


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
