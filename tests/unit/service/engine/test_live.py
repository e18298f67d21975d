"""Live agreement on the tiny artifact: promises from its validation logits, guarded retuning
(raise only on a proven breach, lower only on a proven keep, never below the start), reset; the
drift alarm (latched until reset) and its reactions (none, retune, fallback)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.loading import load_artifact
from policies import build_policy
from service.engine.config import ShadowConfig
from service.engine.handles import PolicyKey
from service.engine.live import LiveAgreement, fallback_threshold, policy_label
from service.stats import AlarmStats, NullSink, RetuneStats


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


class AlarmSink(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.alarms: list[AlarmStats] = []

    def set_alarm(self, s: AlarmStats) -> None:
        self.alarms.append(s)


def _alarm_rig(tiny_artifact: Path, **cfg: object) -> tuple[LiveAgreement, object, PolicyKey,
                                                           AlarmSink]:
    loaded = load_artifact(tiny_artifact, "cpu")
    k = int(loaded.model.num_exits)
    sink = AlarmSink()
    shadow = ShadowConfig(rate=1.0, min_support=50, window=200, **cfg)  # type: ignore[arg-type]
    la = LiveAgreement(loaded.name, k, loaded, shadow, sink)
    key = PolicyKey("maxprob", (("threshold", 0.6),))
    return la, build_policy("maxprob", k, {"threshold": 0.6}), key, sink


def test_the_alarm_fires_once_logs_and_stays_up_until_reset(
        tiny_artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    la, pol, key, sink = _alarm_rig(tiny_artifact)
    _feed(la, key, pol, 1, 0, 49)  # below the support floor: no verdict, no alarm
    assert not la.alarm_of(key).firing and not sink.alarms  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="eeserve.engine"):
        _feed(la, key, pol, 1, 0, 1)  # the 50th disagreement: the overall promise is broken
    a = la.alarm_of(key)
    assert a is not None and a.firing and a.fired == 1 and a.checks == 50
    assert [r.message for r in caplog.records] == ["drift alarm"]
    assert caplog.records[0].reaction == "none"  # type: ignore[attr-defined]
    assert sink.alarms == [AlarmStats(la.model, policy_label(key), True, "none")]
    assert pol.thresholds[0] == 0.6  # reaction none: nothing moves
    _feed(la, key, pol, 1, 200, 200)  # good checks later: the alarm stays up (latched)
    snap = la.snapshot()
    assert snap["alarms"] == [policy_label(key)] and snap["on_alarm"] == "none"
    entry = snap["policies"][policy_label(key)]["alarm"]
    assert entry["firing"] and entry["fired"] == 1 and entry["since"].endswith("Z")
    la.reset()
    assert not la.alarm_of(key).firing and sink.alarms[-1].firing is False  # type: ignore[union-attr]
    assert la.snapshot()["alarms"] == []


def test_fallback_sends_every_early_exit_to_the_last_until_reset(tiny_artifact: Path) -> None:
    la, pol, key, sink = _alarm_rig(tiny_artifact, on_alarm="fallback")
    _feed(la, key, pol, 1, 0, 50)
    assert pol.thresholds[:-1] == [None] * (len(pol.thresholds) - 1)  # fallback_keep 0
    assert pol.thresholds[-1] == 0.6  # the last exit answers anyway
    assert {r.direction for r in sink.retunes} == {"fallback"}
    assert la.alarm_of(key).fallback  # type: ignore[union-attr]
    assert la.snapshot()["policies"][policy_label(key)]["alarm"]["fallback"]
    _feed(la, key, pol, 2, 0, 60)  # the alarm is already up: nothing more moves
    assert len(sink.alarms) == 1 and pol.thresholds[:-1] == [None] * (len(pol.thresholds) - 1)
    la.reset()
    assert pol.thresholds == [0.6] * len(pol.thresholds)
    assert not la.alarm_of(key).fallback  # type: ignore[union-attr]


def test_fallback_keep_lets_that_share_of_validation_exits_through() -> None:
    scores = torch.arange(100, dtype=torch.float64) / 100  # (100,) 0.00 .. 0.99
    half = fallback_threshold(scores, 0.0, 0.5)
    assert half is not None and int((scores >= half).sum()) == 50
    assert fallback_threshold(scores, 0.5, 0.5) == pytest.approx(0.75)  # half of those passing
    assert fallback_threshold(scores, 0.5, 0.0) is None
    assert fallback_threshold(None, 0.5, 0.5) is None  # no validation scores: the last exit


def test_retune_on_alarm_is_guarded_retuning(tiny_artifact: Path) -> None:
    assert ShadowConfig(on_alarm="retune").retunes and ShadowConfig(adapt=True).retunes
    assert not ShadowConfig().retunes
    la, pol, key, sink = _alarm_rig(tiny_artifact, on_alarm="retune")
    _feed(la, key, pol, 1, 0, 50)
    assert [r.direction for r in sink.retunes] == ["raise"]  # one guarded step at exit 1
    assert la.alarm_of(key).firing and sink.alarms[0].reaction == "retune"  # type: ignore[union-attr]
