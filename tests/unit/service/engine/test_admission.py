"""service/engine/admission.py: refuse at once what would wait past its deadline."""

from __future__ import annotations

import pytest

from service.engine.admission import DeadlineAdmission
from service.protocol import Overloaded


def _busy(rows_per_s: float, seconds: float = 1.0) -> DeadlineAdmission:
    """An admission that has seen the engine answer `rows_per_s` rows a second, one a time."""
    adm = DeadlineAdmission(backlog_rows=16, window_s=2.0, min_rows=8)
    n = int(rows_per_s * seconds)
    for i in range(n):
        adm.answered(10.0 + i / rows_per_s, 1, compute_s=0.02)
    return adm


def test_the_drain_rate_is_measured_over_the_window() -> None:
    adm = _busy(100.0)
    assert adm.rows_per_s(11.0) == pytest.approx(100.0, rel=0.05)
    assert adm.rows_per_s(20.0) is None  # the window has emptied: too few answers to tell


def test_no_backlog_means_no_estimate_and_no_refusal() -> None:
    adm = _busy(100.0)
    assert adm.expected_wait_s(11.0, ahead=15, rows=1) is None
    adm.check(11.0, ahead=15, rows=1, deadline_s=0.05)  # an idle engine refuses nothing
    fresh = DeadlineAdmission(backlog_rows=16)
    fresh.check(0.0, ahead=10_000, rows=1, deadline_s=0.05)  # no history: no refusal


def test_expected_wait_is_rows_ahead_over_the_rate_plus_compute() -> None:
    adm = _busy(100.0)
    wait = adm.expected_wait_s(11.0, ahead=99, rows=1)
    assert wait == pytest.approx(1.0 + 0.02, rel=0.05)


def test_a_request_that_cannot_finish_in_time_is_refused_with_429() -> None:
    adm = _busy(100.0)  # 50 rows ahead: ~0.5 s
    adm.check(11.0, ahead=50, rows=1, deadline_s=1.0)  # fits in 0.8 x 1 s
    with pytest.raises(Overloaded, match=r"over the deadline of 500 ms \(deadline_ms\)") as e:
        adm.check(11.0, ahead=50, rows=1, deadline_s=0.5)
    assert e.value.status == 429 and e.value.retry_after_s >= 1.0
