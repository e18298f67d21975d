"""The engine loop on a real tiny model: per-sample exits in shared batches, the engine's rules
(last exit fires, latency budget, deadline, cancellation), and fault isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from policies import build_policy
from policies.replay import replay
from service.engine import EngineConfig, InProcessEngine
from service.protocol import ClassifyRequest, DeadlineExceeded, InternalError, Overloaded
from service.stats import IterationStats, NullSink, SampleStats

TEXTS = ["a great film", "dull and boring", "the plot is fine i guess", "wonderful acting",
         "awful", "it was ok", "bad bad bad movie", "loved every minute of it"]


class ListSink(NullSink):
    def __init__(self) -> None:
        self.iterations: list[IterationStats] = []
        self.samples: list[SampleStats] = []

    def record_iteration(self, s: IterationStats) -> None:
        self.iterations.append(s)

    def record_sample(self, s: SampleStats) -> None:
        self.samples.append(s)


def _engine(path: Path, sink: ListSink | None = None, **kw: object) -> InProcessEngine:
    cfg = EngineConfig(models=(str(path),), device="cpu", max_queue_delay_ms=5.0,
                       **kw)  # type: ignore[arg-type]
    return InProcessEngine(cfg, sink or ListSink())


@pytest.fixture()
async def engine(tiny_artifact: Path) -> AsyncIterator[InProcessEngine]:
    e = _engine(tiny_artifact, max_batch_size=4)
    await e.start()
    yield e
    await e.shutdown(1.0)


def _offline(engine: InProcessEngine, texts: list[str], policy: str,
             params: dict[str, object]) -> tuple[list[int], list[int]]:
    """Exit layer and prediction of each text when run alone, through the offline replay."""
    served = next(iter(engine.served.values()))
    model = served.model
    logits = torch.cat([model.all_exit_logits(model.encode([t])) for t in texts])  # (N, K, C)
    pol = build_policy(policy, model.num_exits, params, served.calibration(policy))
    res = replay(pol, logits)
    return res.exit_layer.tolist(), res.prediction.tolist()


@pytest.mark.parametrize(("policy", "params"), [
    ("maxprob", {"threshold": 0.7}), ("patience", {"patience": 1}), ("none", {}),
    ("entropy", {"threshold": 0.3})])
async def test_concurrent_requests_exit_as_if_run_alone(engine: InProcessEngine, policy: str,
                                                        params: dict[str, object]) -> None:
    reqs = [ClassifyRequest(texts=[t], policy=policy, params=params) for t in TEXTS]
    out = await asyncio.gather(*(engine.classify(r) for r in reqs))
    exits, preds = _offline(engine, TEXTS, policy, params)
    assert [o[0].exit_layer for o in out] == exits
    assert [o[0].label_id for o in out] == preds
    if policy == "none":
        assert set(exits) == {3}


async def test_exited_rows_leave_and_queued_rows_join_between_layers(tiny_artifact: Path) -> None:
    sink = ListSink()
    e = _engine(tiny_artifact, sink, max_batch_size=4)
    await e.start()
    try:
        texts = TEXTS * 2  # 16 texts, 4 rows in flight at most
        out = await e.classify(ClassifyRequest(texts=texts, policy="maxprob",
                                               params={"threshold": 0.6}))
    finally:
        await e.shutdown(1.0)
    assert len(out) == 16
    assert max(it.batch_size for it in sink.iterations) <= 4
    layers_run = sum(it.batch_size for it in sink.iterations)
    assert layers_run == sum(r.exit_layer for r in out)  # no row ran past its exit
    # rows admitted in later rounds were stepped at layer 1 while earlier ones were deeper
    assert any(it.layer == 1 for it in sink.iterations[1:])


async def test_last_exit_always_fires(engine: InProcessEngine) -> None:
    out = await engine.classify(ClassifyRequest(texts=TEXTS, policy="maxprob",
                                                params={"threshold": 1.0}))
    assert {r.exit_layer for r in out} == {3}
    assert not any(r.budget_forced for r in out)


async def test_tiny_latency_budget_forces_the_first_exit(engine: InProcessEngine) -> None:
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:3], policy="none",
                                                latency_budget_ms=0.001))
    assert [r.exit_layer for r in out] == [1, 1, 1]
    assert all(r.budget_forced for r in out)
    roomy = await engine.classify(ClassifyRequest(texts=TEXTS[:3], policy="none",
                                                  latency_budget_ms=60_000))
    assert [r.exit_layer for r in roomy] == [3, 3, 3] and not any(r.budget_forced for r in roomy)


async def test_trace_lists_every_exit_passed(engine: InProcessEngine) -> None:
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:4], policy="none",
                                                return_trace=True))
    for r in out:
        assert r.trace is not None and [t.layer for t in r.trace] == [1, 2, 3]
        assert r.trace[-1].prediction == r.label_id
        assert abs(r.trace[-1].confidence - r.confidence) < 1e-4


async def test_queue_limit_answers_overloaded(tiny_artifact: Path) -> None:
    e = _engine(tiny_artifact, queue_limit=4)
    await e.start()
    try:
        with pytest.raises(Overloaded, match="queue_limit"):
            await e.classify(ClassifyRequest(texts=TEXTS[:5]))
        assert len(await e.classify(ClassifyRequest(texts=TEXTS[:4]))) == 4
    finally:
        await e.shutdown(1.0)


async def test_deadline_passed_in_the_queue_is_a_504(engine: InProcessEngine) -> None:
    with pytest.raises(DeadlineExceeded):
        await engine.classify(ClassifyRequest(texts=TEXTS, deadline_ms=0.0001))
    assert len(await engine.classify(ClassifyRequest(texts=TEXTS[:2]))) == 2


async def test_a_failing_step_fails_only_its_batch(engine: InProcessEngine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = next(iter(engine.served.values())).model
    real_step = model.step
    calls = {"n": 0}

    def flaky(batch, k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_step(batch, k)

    monkeypatch.setattr(model, "step", flaky)
    with pytest.raises(InternalError, match="request id rid-1"):
        await engine.classify(ClassifyRequest(texts=TEXTS[:2], request_id="rid-1"))
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:2], policy="none"))
    assert [r.exit_layer for r in out] == [3, 3]


async def test_out_of_memory_retries_with_smaller_batches(engine: InProcessEngine,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = next(iter(engine.served.values())).model
    real_step = model.step
    sizes: list[int] = []

    def tight(batch, k):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(batch, k)

    monkeypatch.setattr(model, "step", tight)
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:4], policy="none",
                                                return_trace=True))  # the layer path
    assert [r.exit_layer for r in out] == [3, 3, 3, 3]
    assert engine.text_task is not None and engine.text_task.row_cap <= 2


async def test_cancelled_request_rows_are_dropped(engine: InProcessEngine) -> None:
    task = asyncio.ensure_future(engine.classify(ClassifyRequest(texts=TEXTS * 8,
                                                                 policy="none")))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if engine.text_task is not None and engine.text_task.idle():
            break
        await asyncio.sleep(0.01)
    assert engine.text_task is not None and engine.text_task.idle()
    assert len(await engine.classify(ClassifyRequest(texts=TEXTS[:1]))) == 1


async def test_shutdown_finishes_in_flight_requests(tiny_artifact: Path) -> None:
    e = _engine(tiny_artifact, max_batch_size=2)
    await e.start()
    task = asyncio.ensure_future(e.classify(ClassifyRequest(texts=TEXTS, policy="none")))
    await asyncio.sleep(0.01)
    await e.shutdown(10.0)
    assert len(await task) == len(TEXTS)


async def test_heads_are_skipped_where_no_exit_is_possible(engine: InProcessEngine,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = next(iter(engine.served.values())).model
    calls: list[tuple[str, int]] = []
    real_step, real_advance = model.step, model.advance
    monkeypatch.setattr(model, "step", lambda b, k: calls.append(("step", k)) or real_step(b, k))
    monkeypatch.setattr(model, "advance",
                        lambda b, k: calls.append(("advance", k)) or real_advance(b, k))
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:2], policy="none",
                                                return_trace=True))
    assert [r.exit_layer for r in out] == [3, 3]
    assert calls == [("step", 1), ("step", 2), ("step", 3)]  # a trace needs every head
    calls.clear()
    if getattr(model, "has_whole", False):  # onnx: rows that cannot exit early, one call
        real_whole = model.run_whole
        monkeypatch.setattr(model, "run_whole",
                            lambda enc: calls.append(("whole", 3)) or real_whole(enc))
    out = await engine.classify(ClassifyRequest(texts=TEXTS[:2], policy="none"))
    assert [r.exit_layer for r in out] == [3, 3]
    split = min(2, engine.cfg.parallel_steps)  # 2 texts: one call per step-pool thread
    assert calls == ([("whole", 3)] * split if getattr(model, "has_whole", False) else
                     [("advance", 1), ("advance", 2), ("step", 3)])
    calls.clear()
    await engine.classify(ClassifyRequest(texts=TEXTS[:2], policy="static",
                                          params={"layer": 2}))
    assert calls == [("advance", 1), ("step", 2)]
    calls.clear()
    await engine.classify(ClassifyRequest(texts=TEXTS[:1], policy="none",
                                          latency_budget_ms=60_000))
    assert calls == [("step", 1), ("step", 2), ("step", 3)]  # a budget may force any exit


async def test_catch_up_merges_a_younger_cohort_into_an_older_one(tiny_artifact: Path) -> None:
    from service.engine.handles import PolicyKey, RequestHandle
    from service.engine.text_task import TextTask

    e = _engine(tiny_artifact, max_batch_size=8)
    await e.start()
    try:
        served = next(iter(e.served.values()))
        key = PolicyKey("none", ())
        sched = TextTask(e.served, EngineConfig(models=(), max_batch_size=8, catch_up_rounds=6,
                                                 max_queue_delay_ms=0.0), ListSink())
        loop = asyncio.get_running_loop()

        def submit(texts: list[str]) -> RequestHandle:
            h = RequestHandle(model=served.name, policy=key, policy_obj=served.policy(key),
                              encoded=served.model.encode(texts), future=loop.create_future(),
                              loop=loop, request_id="r", arrival=0.0, deadline=1e18,
                              budget_s=None, return_trace=True)  # the layer path
            sched.reserve(len(texts))
            sched.submit(h)
            return h

        def round_() -> None:
            chunks = sched._schedule()
            assert chunks is not None
            sched._admit(chunks)
            sched._run_round()

        first = submit(TEXTS[:2])
        round_()
        assert [c.layer for c in sched.cohorts] == [1]
        second = submit(TEXTS[2:4])
        round_()  # the new cohort runs layer 1, the older one waits, then they merge
        assert [(c.layer, len(c)) for c in sched.cohorts] == [(1, 4)]
        round_()
        round_()
        assert sched.cohorts == []
        r1, r2 = await first.future, await second.future
        assert [r.exit_layer for r in r1 + r2] == [3, 3, 3, 3]
        exits, preds = _offline(e, TEXTS[:4], "none", {})
        assert [r.label_id for r in r1 + r2] == preds
    finally:
        await e.shutdown(1.0)
