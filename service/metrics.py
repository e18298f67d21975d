"""Prometheus metrics from the engine's and the HTTP layer's stats records (service/stats.py).

`PrometheusStatLogger` is the default `StatsSink`. Each instance owns a `CollectorRegistry`, so
several apps (tests) never collide. The metric classes are class attributes (`_counter_cls`,
`_histogram_cls`, `_gauge_cls`) and every metric is built through `_make`, so a backend that
exports elsewhere (Ray) only swaps those. Metric names are a contract with the dashboards and
alerts; they are listed in `METRIC_NAMES`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import prometheus_client as prom

from service.protocol import ModelInfo
from service.stats import (
    AgreementStats,
    AlarmStats,
    CaptionStats,
    IterationStats,
    RequestStats,
    RetuneStats,
    SampleStats,
    ShadowCheckStats,
    ShadowDropStats,
)

CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
DEFAULT_MAX_LAYERS = 24
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)

METRIC_NAMES = (
    "eeserve_requests_total", "eeserve_request_duration_seconds", "eeserve_queue_duration_seconds",
    "eeserve_exit_layer", "eeserve_token_exit_layer", "eeserve_batch_size",
    "eeserve_layers_computed_total", "eeserve_layers_saved_total",
    "eeserve_budget_forced_exits_total", "eeserve_queue_depth", "eeserve_active_rows",
    "eeserve_loaded_models", "eeserve_caption_time_to_first_token_seconds",
    "eeserve_caption_time_per_token_seconds", "eeserve_caption_tokens",
    "eeserve_shadow_checks_total", "eeserve_shadow_disagreements_total",
    "eeserve_token_shadow_checks_total", "eeserve_token_shadow_disagreements_total",
    "eeserve_shadow_dropped_total", "eeserve_shadow_agreement_lower",
    "eeserve_shadow_agreement_upper", "eeserve_shadow_agreement_promise",
    "eeserve_shadow_support", "eeserve_retune_changes_total", "eeserve_retune_threshold",
    "eeserve_retune_budget_shift", "eeserve_drift_alarm", "eeserve_drift_alarms_total",
    "eeserve_engine_process_up",
    "eeserve_engine_resident_memory_bytes", "eeserve_engine_restarts_total",
)
# request statuses that reached the engine: their durations go into the latency histograms
_TIMED_STATUSES = frozenset({"ok", "timeout"})


def exit_layer_buckets(max_layers: int) -> tuple[float, ...]:
    """0.5, 1.5, ..., max_layers + 0.5: one bucket per integer layer, exact sums under Ray."""
    return tuple(k + 0.5 for k in range(max_layers + 1))


class PrometheusStatLogger:
    """A `StatsSink` writing the eeserve metrics into its own registry."""

    _counter_cls: ClassVar[Any] = prom.Counter
    _histogram_cls: ClassVar[Any] = prom.Histogram
    _gauge_cls: ClassVar[Any] = prom.Gauge

    def __init__(self, registry: prom.CollectorRegistry | None = None,
                 max_layers: int = DEFAULT_MAX_LAYERS, process_metrics: bool = True):
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        self.max_layers = max(1, int(max_layers))
        self._kinds: dict[str, str] = {}  # model name -> kind, to route token samples
        if process_metrics:
            prom.ProcessCollector(registry=self.registry)
        layers = exit_layer_buckets(self.max_layers)
        self.requests = self._make(self._counter_cls, "eeserve_requests",
                                   "Finished HTTP inference requests",
                                   ("model", "policy", "endpoint", "status"))
        self.request_duration = self._make(
            self._histogram_cls, "eeserve_request_duration_seconds",
            "Server time of ok and timed-out inference requests", ("model", "policy", "endpoint"),
            buckets=LATENCY_BUCKETS)
        self.queue_duration = self._make(self._histogram_cls, "eeserve_queue_duration_seconds",
                                         "Time requests waited in the batcher queue", ("model",),
                                         buckets=LATENCY_BUCKETS)
        self.exit_layer = self._make(self._histogram_cls, "eeserve_exit_layer",
                                     "Exit layer of each classified sample", ("model", "policy"),
                                     buckets=layers)
        self.token_exit_layer = self._make(self._histogram_cls, "eeserve_token_exit_layer",
                                           "Exit layer of each generated caption token",
                                           ("model", "policy"), buckets=layers)
        self.batch_size = self._make(self._histogram_cls, "eeserve_batch_size",
                                     "Rows per layer step", ("model",), buckets=BATCH_BUCKETS)
        self.layers_computed = self._make(self._counter_cls, "eeserve_layers_computed",
                                          "Row-layers computed (rows x layer steps)", ("model",))
        self.layers_saved = self._make(self._counter_cls, "eeserve_layers_saved",
                                       "Layers skipped by early exits", ("model", "policy"))
        self.budget_forced = self._make(self._counter_cls, "eeserve_budget_forced_exits",
                                        "Exits forced by a latency budget", ("model", "policy"))
        self.queue_depth = self._make(self._gauge_cls, "eeserve_queue_depth",
                                      "Rows waiting in the batcher queue", ())
        self.active_rows = self._make(self._gauge_cls, "eeserve_active_rows",
                                      "Rows being computed", ())
        self.loaded_models = self._make(self._gauge_cls, "eeserve_loaded_models",
                                        "Models loaded and ready", ())
        self.caption_ttft = self._make(
            self._histogram_cls, "eeserve_caption_time_to_first_token_seconds",
            "Time to the first caption token", ("model",), buckets=LATENCY_BUCKETS)
        self.caption_tpot = self._make(
            self._histogram_cls, "eeserve_caption_time_per_token_seconds",
            "Mean time per caption token after the first", ("model",), buckets=LATENCY_BUCKETS)
        self.caption_tokens = self._make(self._histogram_cls, "eeserve_caption_tokens",
                                         "Tokens per caption", ("model",), buckets=TOKEN_BUCKETS)

        self._make_shadow()
        self._make_processes()

    def _make_processes(self) -> None:
        """Engine processes of `--workers N` (service/pool.py); absent with one process."""
        self.engine_up = self._make(self._gauge_cls, "eeserve_engine_process_up",
                                    "1 while the engine process serves, 0 while it is "
                                    "being replaced", ("process",))
        self.engine_rss = self._make(self._gauge_cls, "eeserve_engine_resident_memory_bytes",
                                     "Resident memory of an engine process", ("process",))
        self.engine_restarts = self._make(self._counter_cls, "eeserve_engine_restarts",
                                          "Engine processes that exited and were replaced",
                                          ("role",))

    def _make_shadow(self) -> None:
        """Shadow checks, live agreement against its promise, and guarded retuning."""
        exits = ("model", "policy", "exit")
        self.shadow_checks = self._make(self._counter_cls, "eeserve_shadow_checks",
                                        "Early answers checked against the last exit", exits)
        self.shadow_disagree = self._make(self._counter_cls, "eeserve_shadow_disagreements",
                                          "Checked early answers that differ from the last "
                                          "exit", exits)
        self.token_checks = self._make(self._counter_cls, "eeserve_token_shadow_checks",
                                       "Early caption tokens checked against the last layer",
                                       exits)
        self.token_disagree = self._make(self._counter_cls, "eeserve_token_shadow_disagreements",
                                         "Checked caption tokens the last layer would not have "
                                         "chosen", exits)
        self.shadow_dropped = self._make(self._counter_cls, "eeserve_shadow_dropped",
                                         "Shadow rows dropped to protect live traffic",
                                         ("model", "reason"))
        self.agree_lower = self._make(self._gauge_cls, "eeserve_shadow_agreement_lower",
                                      "Lower confidence bound on live agreement", exits)
        self.agree_upper = self._make(self._gauge_cls, "eeserve_shadow_agreement_upper",
                                      "Upper confidence bound on live agreement (the alarm "
                                      "fires when it is below the promise)", exits)
        self.agree_promise = self._make(self._gauge_cls, "eeserve_shadow_agreement_promise",
                                        "Agreement the calibration promises", exits)
        self.agree_support = self._make(self._gauge_cls, "eeserve_shadow_support",
                                        "Shadow checks behind the agreement bounds", exits)
        self.retunes = self._make(self._counter_cls, "eeserve_retune_changes",
                                  "Threshold changes by guarded retuning",
                                  ("model", "policy", "exit", "direction"))
        self.retune_threshold = self._make(self._gauge_cls, "eeserve_retune_threshold",
                                           "Current threshold of a retuned exit (+Inf: never "
                                           "exits there)", exits)
        self.budget_shift = self._make(self._gauge_cls, "eeserve_retune_budget_shift",
                                       "EENet: validation cost at the retuned thresholds minus "
                                       "at calibration (fraction of full depth)",
                                       ("model", "policy"))
        self.drift_alarm = self._make(self._gauge_cls, "eeserve_drift_alarm",
                                      "1 while the drift alarm of a policy is up (its overall "
                                      "live agreement proven below the promise; it stays up "
                                      "until reset)", ("model", "policy"))
        self.drift_alarms = self._make(self._counter_cls, "eeserve_drift_alarms",
                                       "Times the drift alarm fired, by its reaction (on_alarm)",
                                       ("model", "policy", "reaction"))

    def _make(self, cls: Any, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
        """Build one metric; subclasses for other backends override this or the classes."""
        return cls(name, doc, labelnames=labels, registry=self.registry, **kw)

    # ---- StatsSink ---------------------------------------------------------------------------
    def record_iteration(self, s: IterationStats) -> None:
        self.batch_size.labels(model=s.model).observe(s.batch_size)
        self.layers_computed.labels(model=s.model).inc(s.batch_size)

    def record_sample(self, s: SampleStats) -> None:
        hist = self.token_exit_layer if self._kinds.get(s.model) == "captioner" else self.exit_layer
        hist.labels(model=s.model, policy=s.policy).observe(s.exit_layer)
        saved = max(0, s.num_layers - s.exit_layer)
        if saved:
            self.layers_saved.labels(model=s.model, policy=s.policy).inc(saved)
        if s.budget_forced:
            self.budget_forced.labels(model=s.model, policy=s.policy).inc()

    def record_request(self, s: RequestStats) -> None:
        self.requests.labels(model=s.model, policy=s.policy, endpoint=s.endpoint,
                             status=s.status).inc()
        if s.status in _TIMED_STATUSES:
            self.request_duration.labels(model=s.model, policy=s.policy,
                                         endpoint=s.endpoint).observe(s.total_seconds)
            self.queue_duration.labels(model=s.model).observe(s.queue_seconds)

    def record_caption(self, s: CaptionStats) -> None:
        self.caption_ttft.labels(model=s.model).observe(s.time_to_first_token_seconds)
        if s.tokens > 1:
            self.caption_tpot.labels(model=s.model).observe(s.seconds_per_token)
        self.caption_tokens.labels(model=s.model).observe(s.tokens)

    def record_shadow(self, s: ShadowCheckStats) -> None:
        lab = {"model": s.model, "policy": s.policy, "exit": str(s.exit_layer)}
        checks, disagree = ((self.token_checks, self.token_disagree) if s.token else
                            (self.shadow_checks, self.shadow_disagree))
        checks.labels(**lab).inc()
        if s.agreed:
            disagree.labels(**lab).inc(0)  # the series exists from the first check
        else:
            disagree.labels(**lab).inc()

    def record_shadow_dropped(self, s: ShadowDropStats) -> None:
        self.shadow_dropped.labels(model=s.model, reason=s.reason).inc(s.rows)

    def set_agreement(self, s: AgreementStats) -> None:
        lab = {"model": s.model, "policy": s.policy, "exit": s.exit}
        self.agree_lower.labels(**lab).set(s.lower)
        self.agree_upper.labels(**lab).set(s.upper)
        self.agree_promise.labels(**lab).set(s.promise)
        self.agree_support.labels(**lab).set(s.support)

    def record_retune(self, s: RetuneStats) -> None:
        lab = {"model": s.model, "policy": s.policy, "exit": str(s.exit_layer)}
        self.retunes.labels(**lab, direction=s.direction).inc()
        self.retune_threshold.labels(**lab).set(
            float("inf") if s.threshold is None else s.threshold)
        if s.budget_shift is not None:
            self.budget_shift.labels(model=s.model, policy=s.policy).set(s.budget_shift)

    def set_alarm(self, s: AlarmStats) -> None:
        self.drift_alarm.labels(model=s.model, policy=s.policy).set(1 if s.firing else 0)
        if s.firing:
            self.drift_alarms.labels(model=s.model, policy=s.policy, reaction=s.reaction).inc()

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def set_loaded_models(self, n: int) -> None:
        self.loaded_models.set(n)

    # ---- extras used by the app ------------------------------------------------------------------
    def set_active_rows(self, n: int) -> None:
        self.active_rows.set(n)

    def set_engine_process(self, process: str, up: bool, rss_bytes: int) -> None:
        self.engine_up.labels(process=process).set(1 if up else 0)
        self.engine_rss.labels(process=process).set(rss_bytes)

    def record_engine_restart(self, role: str) -> None:
        self.engine_restarts.labels(role=role).inc()

    def register_models(self, models: list[ModelInfo]) -> None:
        """Remember each model's kind, so caption token samples go to the token histogram."""
        for m in models:
            self._kinds[m.name] = m.kind
            if m.kind != "captioner" and m.ready:  # drop counters exist before any drop
                for reason in ("load", "backlog", "stale", "error"):
                    self.shadow_dropped.labels(model=m.name, reason=reason).inc(0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (served at /metrics)."""
        return prom.generate_latest(self.registry)
