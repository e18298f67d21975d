"""Shadow-check settings and their Prometheus series (service/settings.py, service/metrics.py)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service.engine.config import EngineConfig
from service.metrics import PrometheusStatLogger
from service.protocol import ModelInfo
from service.settings import Settings
from service.stats import (
    AgreementStats,
    AlarmStats,
    RetuneStats,
    ShadowCheckStats,
    ShadowDropStats,
)


def _samples(sink: PrometheusStatLogger) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(sink.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_shadow_series_follow_the_records() -> None:
    sink = PrometheusStatLogger(process_metrics=False)
    sink.register_models([ModelInfo(name="m", kind="text-classifier", ready=True)])
    lab = (("exit", "2"), ("model", "m"), ("policy", "beem"))
    for agreed in (True, True, False):
        sink.record_shadow(ShadowCheckStats("m", "beem", 2, agreed))
    sink.record_shadow(ShadowCheckStats("m", "beem", 2, False, token=True))
    sink.record_shadow_dropped(ShadowDropStats("m", "load", 3))
    sink.set_agreement(AgreementStats("m", "beem", "all", 0.5, 0.9, 0.97, 120))
    sink.record_retune(RetuneStats("m", "eenet", 1, "raise", None, 0.02))
    s = _samples(sink)
    assert s[("eeserve_shadow_checks_total", lab)] == 3
    assert s[("eeserve_shadow_disagreements_total", lab)] == 1
    assert s[("eeserve_token_shadow_disagreements_total", lab)] == 1
    assert s[("eeserve_shadow_dropped_total", (("model", "m"), ("reason", "load")))] == 3
    assert s[("eeserve_shadow_dropped_total", (("model", "m"), ("reason", "stale")))] == 0
    all_lab = (("exit", "all"), ("model", "m"), ("policy", "beem"))
    assert s[("eeserve_shadow_agreement_upper", all_lab)] == 0.9
    assert s[("eeserve_shadow_agreement_promise", all_lab)] == 0.97
    assert s[("eeserve_shadow_support", all_lab)] == 120
    ret = (("direction", "raise"), ("exit", "1"), ("model", "m"), ("policy", "eenet"))
    assert s[("eeserve_retune_changes_total", ret)] == 1
    assert s[("eeserve_retune_threshold", (("exit", "1"), ("model", "m"),
                                           ("policy", "eenet")))] == float("inf")
    assert s[("eeserve_retune_budget_shift", (("model", "m"), ("policy", "eenet")))] == 0.02


def test_the_drift_alarm_gauge_is_up_until_reset_and_firings_are_counted() -> None:
    sink = PrometheusStatLogger(process_metrics=False)
    lab = (("model", "m"), ("policy", "eenet"))
    sink.set_alarm(AlarmStats("m", "eenet", True, "fallback"))
    s = _samples(sink)
    assert s[("eeserve_drift_alarm", lab)] == 1
    assert s[("eeserve_drift_alarms_total", (*lab, ("reaction", "fallback")))] == 1
    sink.set_alarm(AlarmStats("m", "eenet", False, "fallback"))  # reset
    s = _samples(sink)
    assert s[("eeserve_drift_alarm", lab)] == 0
    assert s[("eeserve_drift_alarms_total", (*lab, ("reaction", "fallback")))] == 1


def test_shadow_settings_reach_the_engine_and_are_checked() -> None:
    s = Settings(shadow_rate=0.05, shadow_model_rates={"m": 0.5}, adapt=True)
    cfg = EngineConfig.from_settings(s).shadow
    assert cfg.rate_for("m") == 0.5 and cfg.rate_for("other") == 0.05 and cfg.adapt
    assert Settings().shadow_rate == 0.01
    cfg = EngineConfig.from_settings(Settings(on_alarm="fallback", fallback_keep=0.5)).shadow
    assert (cfg.on_alarm, cfg.fallback_keep, cfg.retunes) == ("fallback", 0.5, False)
    with pytest.raises(ValidationError, match="on_alarm"):
        Settings(on_alarm="panic")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fallback_keep"):
        Settings(fallback_keep=1.0)
    with pytest.raises(ValidationError, match="shadow_rate"):
        Settings(shadow_rate=1.5)
    with pytest.raises(ValidationError, match=r"shadow_model_rates\['m'\]=2.0"):
        Settings(shadow_model_rates={"m": 2.0})
