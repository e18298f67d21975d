"""InProcessEngine.add_model: a model built after start is served from then on."""

from __future__ import annotations

from pathlib import Path

from service.engine import EngineConfig, InProcessEngine
from service.protocol import ClassifyRequest


async def test_a_model_added_after_start_serves_and_a_bad_one_is_reported(
        tiny_artifact: Path, tmp_path: Path) -> None:
    engine = InProcessEngine(EngineConfig(models=(), device="cpu", max_queue_delay_ms=0.0))
    await engine.start()  # nothing to serve yet
    try:
        assert not engine.ready() and engine.models() == []
        await engine.add_model(str(tiny_artifact))
        assert engine.ready() and [m.name for m in engine.models()] == ["tiny-text"]
        res = await engine.classify(ClassifyRequest(texts=["a great film", "dull"],
                                                    policy="none"))
        assert [r.exit_layer for r in res] == [3, 3]

        await engine.add_model(str(tmp_path / "missing"))
        assert not engine.ready()  # a load failure keeps the engine unready, as at start
        bad = [m for m in engine.models() if not m.ready]
        assert len(bad) == 1 and bad[0].error
        await engine.add_model(str(tiny_artifact))  # the same name twice is refused
        assert "duplicate model name" in str(engine.failed)
    finally:
        await engine.shutdown(2)
