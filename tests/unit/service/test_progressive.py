"""service/progressive.py: which requests may run while models are still building."""

from __future__ import annotations

import pytest

from service.progressive import require_model
from service.protocol import ModelInfo, NotReady


class _Engine:
    def __init__(self, models: list[ModelInfo], ready: bool = False):
        self._models, self._ready = models, ready

    def ready(self) -> bool:
        return self._ready

    def models(self) -> list[ModelInfo]:
        return self._models


TEXT = ModelInfo(name="text", kind="text-classifier", ready=True)
BUILDING_TEXT = ModelInfo(name="text", kind="text-classifier", ready=False, details={
    "build": {"line": "training step 3/10, ~2 min left"}})
BUILDING_CAP = ModelInfo(name="cap", kind="captioner", ready=False, details={
    "build": {"line": "queued, ~12 min left"}})
FAILED_LOAD = ModelInfo(name="bad", kind="unknown", ready=False, error="manifest missing")


def test_a_ready_engine_serves_everything() -> None:
    require_model(_Engine([TEXT], ready=True), None, "text-classifier")  # type: ignore[arg-type]


def test_a_loaded_model_serves_while_another_builds() -> None:
    eng = _Engine([TEXT, BUILDING_CAP])
    require_model(eng, None, "text-classifier")  # type: ignore[arg-type]
    require_model(eng, "text", "text-classifier")  # type: ignore[arg-type]
    with pytest.raises(NotReady, match="cap: queued, ~12 min left"):
        require_model(eng, None, "captioner")  # type: ignore[arg-type]


def test_a_building_model_answers_503_with_its_progress() -> None:
    with pytest.raises(NotReady, match=r"text: training step 3/10, ~2 min left"):
        require_model(_Engine([BUILDING_TEXT, BUILDING_CAP]), None,  # type: ignore[arg-type]
                      "text-classifier")


def test_a_load_failure_holds_back_only_the_model_that_failed() -> None:
    eng = _Engine([TEXT, FAILED_LOAD, BUILDING_CAP])
    require_model(eng, "text", "text-classifier")  # type: ignore[arg-type]
    require_model(eng, None, "text-classifier")  # type: ignore[arg-type]
    with pytest.raises(NotReady, match="model 'bad' is not ready: failed to load: manifest "
                                       "missing"):
        require_model(eng, "bad", "text-classifier")  # type: ignore[arg-type]


def test_no_ready_model_of_the_kind_names_every_reason() -> None:
    with pytest.raises(NotReady, match="no captioner model is ready yet; bad: failed to load: "
                                       "manifest missing; cap: queued"):
        require_model(_Engine([TEXT, FAILED_LOAD, BUILDING_CAP]), None,  # type: ignore[arg-type]
                      "captioner")
    with pytest.raises(NotReady, match="models are not loaded yet"):
        require_model(_Engine([]), None, "text-classifier")  # type: ignore[arg-type]
    stopped = ModelInfo(name="text", kind="text-classifier", ready=False)
    with pytest.raises(NotReady, match="text: not loaded yet"):
        require_model(_Engine([stopped]), None, "text-classifier")  # type: ignore[arg-type]


def test_an_unknown_name_is_left_to_the_engine_404() -> None:
    require_model(_Engine([TEXT, BUILDING_CAP]), "nope", "text-classifier")  # type: ignore[arg-type]
