"""PrometheusStatLogger: each stats record lands in the right metric with the right labels."""

from __future__ import annotations

import pytest

from service.metrics import METRIC_NAMES, PrometheusStatLogger, exit_layer_buckets
from service.protocol import ModelInfo
from service.stats import CaptionStats, IterationStats, RequestStats, SampleStats


@pytest.fixture()
def sink() -> PrometheusStatLogger:
    s = PrometheusStatLogger(max_layers=6, process_metrics=False)
    s.register_models([ModelInfo(name="txt", kind="text-classifier", ready=True),
                       ModelInfo(name="cap", kind="captioner", ready=True)])
    return s


def value(sink: PrometheusStatLogger, name: str, **labels: str) -> float:
    v = sink.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_exit_layer_buckets_have_one_bucket_per_layer() -> None:
    assert exit_layer_buckets(3) == (0.5, 1.5, 2.5, 3.5)


def test_iteration_counts_rows_and_batch_sizes(sink: PrometheusStatLogger) -> None:
    sink.record_iteration(IterationStats("txt", batch_size=5, layer=1, seconds=0.01))
    sink.record_iteration(IterationStats("txt", batch_size=3, layer=2, seconds=0.01))
    assert value(sink, "eeserve_layers_computed_total", model="txt") == 8
    assert value(sink, "eeserve_batch_size_count", model="txt") == 2
    assert value(sink, "eeserve_batch_size_sum", model="txt") == 8


def test_text_sample_exit_layer_saved_layers_and_budget(sink: PrometheusStatLogger) -> None:
    sink.record_sample(SampleStats("txt", "beem", exit_layer=2, num_layers=6, budget_forced=True))
    sink.record_sample(SampleStats("txt", "beem", exit_layer=6, num_layers=6, budget_forced=False))
    labels = {"model": "txt", "policy": "beem"}
    assert value(sink, "eeserve_exit_layer_bucket", le="2.5", **labels) == 1
    assert value(sink, "eeserve_exit_layer_count", **labels) == 2
    assert value(sink, "eeserve_layers_saved_total", **labels) == 4
    assert value(sink, "eeserve_budget_forced_exits_total", **labels) == 1
    assert value(sink, "eeserve_token_exit_layer_count", **labels) == 0


def test_captioner_samples_go_to_the_token_histogram(sink: PrometheusStatLogger) -> None:
    sink.record_sample(SampleStats("cap", "maxprob", 3, 6, False))
    labels = {"model": "cap", "policy": "maxprob"}
    assert value(sink, "eeserve_token_exit_layer_count", **labels) == 1
    assert value(sink, "eeserve_exit_layer_count", **labels) == 0


def test_requests_are_counted_and_only_timed_when_they_reached_the_engine(
        sink: PrometheusStatLogger) -> None:
    sink.record_request(RequestStats("txt", "beem", "classify", "ok", 0.002, 0.02))
    sink.record_request(RequestStats("txt", "beem", "classify", "timeout", 0.0, 5.0))
    sink.record_request(RequestStats("txt", "beem", "classify", "bad_request", 0.0, 0.001))
    base = {"model": "txt", "policy": "beem", "endpoint": "classify"}
    assert value(sink, "eeserve_requests_total", status="ok", **base) == 1
    assert value(sink, "eeserve_requests_total", status="bad_request", **base) == 1
    assert value(sink, "eeserve_request_duration_seconds_count", **base) == 2
    assert value(sink, "eeserve_request_duration_seconds_sum", **base) == pytest.approx(5.02)
    assert value(sink, "eeserve_queue_duration_seconds_count", model="txt") == 2


def test_caption_time_per_token_needs_two_tokens(sink: PrometheusStatLogger) -> None:
    sink.record_caption(CaptionStats("cap", "maxprob", tokens=1,
                                     time_to_first_token_seconds=0.05, seconds_per_token=0.0))
    sink.record_caption(CaptionStats("cap", "maxprob", tokens=5,
                                     time_to_first_token_seconds=0.04, seconds_per_token=0.01))
    assert value(sink, "eeserve_caption_time_to_first_token_seconds_count", model="cap") == 2
    assert value(sink, "eeserve_caption_time_per_token_seconds_count", model="cap") == 1
    assert value(sink, "eeserve_caption_tokens_sum", model="cap") == 6


def test_gauges(sink: PrometheusStatLogger) -> None:
    sink.set_queue_depth(7)
    sink.set_active_rows(3)
    sink.set_loaded_models(2)
    assert value(sink, "eeserve_queue_depth") == 7
    assert value(sink, "eeserve_active_rows") == 3
    assert value(sink, "eeserve_loaded_models") == 2


def test_render_lists_every_metric_name(sink: PrometheusStatLogger) -> None:
    text = sink.render().decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "process_cpu_seconds_total" not in text


def test_sinks_own_their_registries() -> None:
    a, b = PrometheusStatLogger(), PrometheusStatLogger()
    a.set_queue_depth(5)
    assert b.registry.get_sample_value("eeserve_queue_depth") == 0
    assert a.registry.get_sample_value("process_cpu_seconds_total") is not None
