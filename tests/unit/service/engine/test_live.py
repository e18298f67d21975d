"""Live agreement on the tiny artifact: promises from its validation logits, guarded retuning
(raise only on a proven breach, lower only on a proven keep, never below the start), reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.loading import load_artifact
from policies import build_policy
from service.engine.config import ShadowConfig
from service.engine.handles import PolicyKey
from service.engine.live import LiveAgreement, policy_label
from service.stats import NullSink, RetuneStats


class Sink(NullSink):
    def __init__(self) -> None:
        self.retunes: list[RetuneStats] = []

    def record_retune(self, s: RetuneStats) -> None:
        self.retunes.append(s)


@pytest.fixture()
def live(tiny_artifact: Path) -> tuple[LiveAgreement, object, PolicyKey, Sink]:
    loaded = load_artifact(tiny_artifact, "cpu")
    k = int(loaded.model.num_exits)
    sink = Sink()
    cfg = ShadowConfig(rate=1.0, min_support=50, window=200, adapt=True, adapt_step=0.25)
    la = LiveAgreement(loaded.name, k, loaded, cfg, sink)
    key = PolicyKey("maxprob", (("threshold", 0.6),))
    return la, build_policy("maxprob", k, {"threshold": 0.6}), key, sink


def _feed(la: LiveAgreement, key: PolicyKey, pol: object, exit_layer: int, agree: int,
          n: int) -> None:
    for i in range(n):
        la.record(key, pol, exit_layer, i < agree)  # type: ignore[arg-type]
    la.refresh()


def test_promises_come_from_the_calibrated_validation_replay(live) -> None:
    la, pol, key, _ = live
    _feed(la, key, pol, 1, 10, 10)
    t = la.keys[key]
    assert all(0.0 < p <= 1.0 for p in t.promises) and t.promises[-1] == 1.0
    assert 0.0 < t.promise_all < 1.0
    snap = la.snapshot()["policies"]
    assert list(snap) == ["maxprob~" + list(snap)[0][-6:]]
    assert snap[list(snap)[0]]["exits"]["1"]["checks"] == 10


def test_no_move_without_support_and_raise_on_a_proven_breach(live) -> None:
    la, pol, key, sink = live
    _feed(la, key, pol, 1, 0, 49)  # all disagree, but below the support floor
    assert pol.thresholds[0] == 0.6 and not sink.retunes
    _feed(la, key, pol, 1, 0, 1)  # the 50th check: a proven breach
    assert pol.thresholds[0] is None or pol.thresholds[0] > 0.6
    assert [(r.exit_layer, r.direction) for r in sink.retunes] == [(1, "raise")]
    assert la.keys[key].windows["1"].bits == type(la.keys[key].windows["1"].bits)()  # cleared
    assert all(t == 0.6 for t in pol.thresholds[1:-1])  # other exits untouched


def test_lower_only_on_a_proven_keep_and_never_below_the_start(live) -> None:
    la, pol, key, sink = live
    _feed(la, key, pol, 1, 0, 50)
    raised = pol.thresholds[0]
    _feed(la, key, pol, 1, 50, 50)  # 50/50 agree: lower bound ~0.94, not above the promise
    first = [r.direction for r in sink.retunes]
    for _ in range(30):
        _feed(la, key, pol, 1, 200, 200)
    t0 = pol.thresholds[0]
    assert t0 is not None and t0 >= 0.6
    assert first[0] == "raise"
    assert all(r.threshold is None or r.threshold >= 0.6 for r in sink.retunes)
    if raised is not None:
        assert t0 <= raised


def test_reset_restores_the_start(live) -> None:
    la, pol, key, _ = live
    _feed(la, key, pol, 1, 0, 60)
    assert pol.thresholds[0] != 0.6
    assert la.reset() == 1
    assert pol.thresholds[0] == 0.6
    assert la.snapshot()["policies"][list(la.snapshot()["policies"])[0]]["retuning"][
        "changes"][-1]["direction"] == "reset"


def test_eenet_retuning_says_how_far_the_budget_moved(tiny_artifact: Path) -> None:
    loaded = load_artifact(tiny_artifact, "cpu")
    k = int(loaded.model.num_exits)
    sink = Sink()
    cfg = ShadowConfig(rate=1.0, min_support=50, window=200, adapt=True)
    la = LiveAgreement(loaded.name, k, loaded, cfg, sink)
    cal = loaded.manifest["policies"]["eenet"]
    key = PolicyKey("eenet", (("offset", -5.0),))  # far looser than the fit
    pol = build_policy("eenet", k, {"offset": -5.0}, cal)
    _feed(la, key, pol, 1, 0, 50)
    assert sink.retunes and sink.retunes[0].direction == "raise"
    shift = sink.retunes[0].budget_shift
    assert shift is not None and shift >= 0.0  # raising a threshold never lowers the cost
    assert la.snapshot()["policies"][policy_label(key)]["retuning"][
        "budget_shift"] == shift
