"""Settings: EESERVE_* environment, keyword overrides, validation naming the field."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from service.settings import MiB, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("EESERVE_"):
            monkeypatch.delenv(k)


def test_defaults() -> None:
    s = Settings()
    assert (s.models, s.host, s.port, s.api_key, s.default_policy) == (
        [], "127.0.0.1", 8000, None, None)
    assert s.max_body_bytes == MiB and s.long_text == "truncate"


def test_environment_and_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EESERVE_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("EESERVE_MODELS", "artifacts/a, artifacts/b,,")
    monkeypatch.setenv("EESERVE_DEFAULT_POLICY", "beem")
    s = Settings()
    assert (s.max_batch_size, s.models, s.default_policy) == (
        32, ["artifacts/a", "artifacts/b"], "beem")
    assert Settings(max_batch_size=8).max_batch_size == 8  # keywords win


def test_empty_api_key_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EESERVE_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("EESERVE_API_KEY", "k")
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == "k"


@pytest.mark.parametrize(("field", "value"), [
    ("max_batch_size", 0), ("port", 70000), ("device", "tpu"), ("default_policy", "bogus"),
    ("max_body_bytes", 10), ("log_level", "loud"), ("long_text", "drop")])
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(**{field: value})
    assert e.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("field", ["request_timeout_ms", "shutdown_grace_s"])
def test_infinite_durations_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} must be finite"):
        Settings(**{field: math.inf})


def test_infinite_queue_delay_is_over_its_bound() -> None:
    with pytest.raises(ValidationError, match="max_queue_delay_ms"):
        Settings(max_queue_delay_ms=math.inf)


def test_caption_body_limit_fits_every_image_base64_encoded() -> None:
    s = Settings(max_images_per_request=2, max_image_bytes=3000)
    assert s.max_caption_body_bytes == 2 * 3000 * 4 // 3 + 64 * 1024


def test_public_dict_hides_the_key() -> None:
    assert Settings(api_key="k").public_dict()["api_key"] == "***"
    assert Settings().public_dict()["api_key"] is None
    assert "k" not in str(Settings(api_key="k").public_dict().values())


def test_overload_and_readiness_settings_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.ready_when, s.max_inflight_requests, s.deadline_admission,
            s.gil_switch_interval_ms) == ("all", 32, False, None)
    monkeypatch.setenv("EESERVE_READY_WHEN", "any")
    monkeypatch.setenv("EESERVE_MAX_INFLIGHT_REQUESTS", "32")
    monkeypatch.setenv("EESERVE_DEADLINE_ADMISSION", "true")
    monkeypatch.setenv("EESERVE_GIL_SWITCH_INTERVAL_MS", "0.5")
    s = Settings()
    assert (s.ready_when, s.max_inflight_requests, s.deadline_admission,
            s.gil_switch_interval_ms) == ("any", 32, True, 0.5)
    monkeypatch.setenv("EESERVE_READY_WHEN", "some")
    with pytest.raises(ValidationError, match="ready_when"):
        Settings()
