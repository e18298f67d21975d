"""The in-process engine: worker thread, layer-level continuous batching, exit policies."""

from __future__ import annotations

from service.engine.config import EngineConfig
from service.engine.core import InProcessEngine

__all__ = ["EngineConfig", "InProcessEngine"]
