"""Shadow checks in the scheduler, on a fake step model whose early and final answers are known:
shadow work runs only while no live work runs or waits, never changes live answers, is dropped
under load, and its checks land in the live-agreement windows."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from models.base import Encoded, StepOutput
from models.loading import LoadedModel
from models.text_classifier import TextBatch
from policies import build_policy
from service.engine.config import EngineConfig, ShadowConfig
from service.engine.handles import PolicyKey, RequestHandle, now
from service.engine.live import LiveAgreement
from service.engine.served import ServedModel, StepCost
from service.engine.text_task import TextTask
from service.protocol import ClassifyResult
from service.stats import NullSink, ShadowCheckStats, ShadowDropStats

K = 4


@dataclass
class Call:
    layer: int
    rows: int
    shadow: bool  # made inside ShadowRunner.step
    live_busy: bool  # live cohorts or queued requests existed at that moment


@dataclass
class FakeStepModel:
    """Row i (its first token id) answers i % 2 with probability 0.99 at exits 1..K-1 and
    class 0 at exit K: odd rows disagree with the full-depth answer. Each layer sleeps 5 ms."""

    num_exits: int = K
    calls: list[Call] = field(default_factory=list)
    sched: TextTask | None = None
    in_shadow: bool = False

    def embed(self, enc: Encoded) -> TextBatch:
        ids = enc.input_ids[:, :1].float()  # (B, 1)
        hidden = torch.cat([ids, torch.zeros_like(ids)], 1).unsqueeze(-1)  # (B, 2, 1)
        return TextBatch(hidden, enc.attention_mask[:, :2].clone(), 0)

    def _log(self, batch: TextBatch, k: int) -> None:
        s = self.sched
        busy = s is not None and bool(s.cohorts or s.pending)
        self.calls.append(Call(k, len(batch), self.in_shadow, busy))
        time.sleep(0.005)

    def advance(self, batch: TextBatch, k: int) -> TextBatch:
        self._log(batch, k)
        return TextBatch(batch.hidden, batch.attention_mask, k)

    def step(self, batch: TextBatch, k: int) -> StepOutput:
        self._log(batch, k)
        ids = batch.hidden[:, 0, 0].long()  # (B,)
        cls = torch.zeros_like(ids) if k == self.num_exits else ids % 2
        logits = torch.full((len(ids), 2), -4.6)  # (B, 2): p(max) ~ 0.99
        logits[torch.arange(len(ids)), cls] = 0.0
        return StepOutput(logits=logits, batch=TextBatch(batch.hidden, batch.attention_mask, k))


def _served(model: FakeStepModel, tmp_path: Path, cfg: ShadowConfig) -> ServedModel:
    loaded = LoadedModel("fake", "text-classifier", model, {"labels": ["a", "b"]}, tmp_path)
    served = ServedModel(loaded, "maxprob", "cpu", StepCost(0.005))
    served.live = LiveAgreement("fake", K, loaded, cfg, NullSink())
    return served


class Sink(NullSink):
    def __init__(self) -> None:
        self.checks: list[ShadowCheckStats] = []
        self.drops: list[ShadowDropStats] = []

    def record_shadow(self, s: ShadowCheckStats) -> None:
        self.checks.append(s)

    def record_shadow_dropped(self, s: ShadowDropStats) -> None:
        self.drops.append(s)


@dataclass
class Rig:
    sched: TextTask
    model: FakeStepModel
    sink: Sink
    served: ServedModel


@pytest.fixture()
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    rate = getattr(request, "param", 1.0)
    shadow = ShadowConfig(rate=rate, seed=0, min_support=4, window=100)
    model = FakeStepModel()
    served = _served(model, tmp_path, shadow)
    sink = Sink()
    cfg = EngineConfig(models=(), max_batch_size=4, max_queue_delay_ms=0.0, shadow=shadow)
    sched = TextTask({"fake": served}, cfg, sink)
    model.sched = sched
    real_step = sched.shadow.step

    def tagged_step() -> None:
        model.in_shadow = True
        try:
            real_step()
        finally:
            model.in_shadow = False

    sched.shadow.step = tagged_step  # type: ignore[method-assign]
    thread = threading.Thread(target=sched.run_forever, daemon=True)
    thread.start()
    yield Rig(sched, model, sink, served)
    with sched.cond:
        sched.stopped = True
        sched.cond.notify_all()
    thread.join(5)


def _handle(ids: list[int], loop: asyncio.AbstractEventLoop, name: str) -> RequestHandle:
    n = len(ids)
    enc = Encoded(torch.tensor([[i, 0] for i in ids]), torch.ones(n, 2, dtype=torch.long),
                  [2] * n, [False] * n)
    key = PolicyKey("maxprob", (("threshold", 0.9),))
    pol = build_policy("maxprob", K, {"threshold": 0.9})
    t = now()
    return RequestHandle(model="fake", policy=key, policy_obj=pol, encoded=enc,
                         future=loop.create_future(), loop=loop, request_id=name, arrival=t,
                         deadline=t + 30, budget_s=None, return_trace=False)


async def _classify(rig: Rig, ids: list[int], name: str) -> list[ClassifyResult]:
    h = _handle(ids, asyncio.get_running_loop(), name)
    rig.sched.reserve(h.size)
    rig.sched.submit(h)
    return await asyncio.wait_for(h.future, 10)


async def _settle(rig: Rig, checks: int = 0) -> None:
    """Wait for `checks` shadow checks and no shadow work left (the answer is sent before the
    rows are captured, so the work may not exist yet when the request returns)."""
    for _ in range(400):
        if len(rig.sink.checks) >= checks and not rig.sched.shadow.has_work():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("shadow work never finished")


async def test_shadow_rows_run_only_when_no_live_work_runs_or_waits(rig: Rig) -> None:
    out = await _classify(rig, [0, 1, 2, 3], "a")
    assert [r.exit_layer for r in out] == [1, 1, 1, 1]  # answered at once, early
    assert [r.label_id for r in out] == [0, 1, 0, 1]
    await _settle(rig, 4)
    shadow = [c for c in rig.model.calls if c.shadow]
    assert [c.layer for c in shadow] == [2, 3, 4]  # no exit heads until the last exit
    assert not any(c.live_busy for c in shadow)
    checks = sorted((c.exit_layer, c.agreed) for c in rig.sink.checks)
    assert checks == [(1, False), (1, False), (1, True), (1, True)]
    snap = rig.served.live.snapshot()
    exit1 = snap["policies"]["maxprob~" + next(iter(snap["policies"]))[-6:]]["exits"]["1"]
    assert exit1["checks"] == 4 and exit1["agreement"] == 0.5
    assert exit1["verdict"] == "broken"  # promise 0.995, 2 of 4 agreed, support floor 4


@pytest.mark.parametrize("rig", [0.0, 1.0], indirect=True)
async def test_live_answers_and_steps_do_not_depend_on_shadow(rig: Rig) -> None:
    out = await _classify(rig, [5, 6, 7], "a")
    await _settle(rig, 3 if rig.sched.cfg.shadow.rate else 0)
    live = [(c.layer, c.rows) for c in rig.model.calls if not c.shadow]
    assert live == [(1, 3)]
    assert [(r.label_id, r.exit_layer) for r in out] == [(1, 1), (0, 1), (1, 1)]


async def test_live_request_waits_at_most_one_shadow_layer(rig: Rig) -> None:
    await _classify(rig, [1, 3, 5, 7], "a")
    while not any(c.shadow for c in rig.model.calls):  # shadow work has started
        await asyncio.sleep(0.001)
    n_before = len(rig.model.calls)
    await _classify(rig, [9], "b")
    after = rig.model.calls[n_before:]
    first_live = next(i for i, c in enumerate(after) if not c.shadow)
    assert first_live <= 1  # at most the shadow layer already running when it arrived
    await _settle(rig, 5)


async def test_shadow_rows_are_dropped_when_requests_are_queued(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    a, b = _handle([1, 3, 5, 7], loop, "a"), _handle([2, 4], loop, "b")
    rig.sched.reserve(a.size + b.size)
    rig.sched.submit(a)
    rig.sched.submit(b)  # b waits in the queue while a's rows exit (batch of 4)
    await asyncio.wait_for(asyncio.gather(a.future, b.future), 10)
    await _settle(rig, 2)
    assert [(d.reason, d.rows) for d in rig.sink.drops] == [("load", 4)]
    assert sorted(c.agreed for c in rig.sink.checks) == [True, True]  # b's rows, checked


async def test_a_failing_judgement_drops_shadow_work_and_serving_goes_on(rig: Rig) -> None:
    def broken(limit: int | None = None) -> None:
        raise RuntimeError("boom")

    rig.served.live.refresh = broken  # type: ignore[method-assign]
    await _classify(rig, [1, 3], "a")
    for _ in range(200):  # the checks complete, the judgement fails, the work is dropped
        if not rig.sched.shadow.has_work() and len(rig.sink.checks) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(rig.sink.checks) == 2 and not rig.sched.shadow.has_work()
    out = await _classify(rig, [5], "b")  # the worker thread is alive
    assert out[0].exit_layer == 1
