"""eeserve metrics through Ray Serve's metric API (`ray.serve.metrics`).

Under Ray, every replica is a separate process, so a `prometheus_client` registry per replica
would answer `/metrics` with whichever replica the proxy picked. `RayStatLogger` keeps every
metric name, label and bucket of `service.metrics.PrometheusStatLogger` and only swaps the metric
classes: Ray's node agent then exports them, summed correctly per replica, on its metrics port as
`ray_<name>` with extra `application`, `deployment` and `replica` labels. The Prometheus job in
deploy/ray/prometheus-ray.yml strips the `ray_` prefix, so the Grafana dashboard and the alert
rules work unchanged. Set `RAY_EXPORT_COUNTER_AS_GAUGE=0` in the replicas, or Ray also exports
every counter a second time as a gauge without the `_total` suffix.
"""

from __future__ import annotations

from typing import Any

import prometheus_client as prom

from service.metrics import DEFAULT_MAX_LAYERS, PrometheusStatLogger


class _Bound:
    """One label combination of a Ray metric, with the prometheus_client call names."""

    def __init__(self, metric: Any, tags: dict[str, str]):
        self._metric, self._tags = metric, tags

    def inc(self, amount: float = 1.0) -> None:
        if amount <= 0:  # Ray counters refuse 0 (prometheus_client uses it to pre-create series)
            return
        self._metric.inc(amount, tags=self._tags)

    def observe(self, value: float) -> None:
        self._metric.observe(value, tags=self._tags)

    def set(self, value: float) -> None:
        self._metric.set(value, tags=self._tags)


class RayMetric(_Bound):
    """A Ray metric used like a prometheus_client one: `.labels(**kw).inc()` or `.set(v)`."""

    def __init__(self, metric: Any, label_names: tuple[str, ...]):
        super().__init__(metric, {})
        self.label_names = label_names

    def labels(self, **tags: Any) -> _Bound:
        if set(tags) != set(self.label_names):
            raise ValueError(f"labels {sorted(tags)} != {sorted(self.label_names)}")
        return _Bound(self._metric, {k: str(v) for k, v in tags.items()})


class RayStatLogger(PrometheusStatLogger):
    """`PrometheusStatLogger` whose metrics are `ray.serve.metrics` objects."""

    def __init__(self, max_layers: int = DEFAULT_MAX_LAYERS):
        super().__init__(registry=None, max_layers=max_layers, process_metrics=False)

    def _make(self, cls: Any, name: str, doc: str, labels: tuple[str, ...], **kw: Any) -> Any:
        from ray.serve import metrics as ray_metrics

        tag_keys: Any = tuple(labels) or None
        if cls is prom.Counter:
            metric: Any = ray_metrics.Counter(name, doc, tag_keys=tag_keys)
        elif cls is prom.Histogram:
            metric = ray_metrics.Histogram(name, doc, boundaries=list(kw["buckets"]),
                                           tag_keys=tag_keys)
        elif cls is prom.Gauge:
            metric = ray_metrics.Gauge(name, doc, tag_keys=tag_keys)
        else:
            raise TypeError(f"no Ray equivalent of {cls!r}")
        return RayMetric(metric, tuple(labels))
