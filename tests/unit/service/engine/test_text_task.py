"""The text task on the engine loop, with a fake step model and a fake clock (exact arithmetic).

In the style of vLLM's scheduler tests: each test drives `run_once` round by round and checks
what ran (layer, rows) and when each row left, to the time unit. See fakes.py for the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.engine.config import EngineConfig
from service.engine.handles import RequestHandle
from service.engine.served import ServedModel
from service.engine.text_task import TextTask
from service.protocol import DeadlineExceeded, InternalError, NotReady, Overloaded
from service.stats import NullSink
from tests.unit.service.engine.fakes import (
    FakeClock,
    FakeStepModel,
    K,
    U,
    handle,
    served,
    settle,
)


class GaugeSink(NullSink):
    def __init__(self) -> None:
        self.queue: list[int] = []
        self.active: list[int] = []

    def set_queue_depth(self, n: int) -> None:
        self.queue.append(n)

    def set_active_rows(self, n: int) -> None:
        self.active.append(n)


@dataclass
class Rig:
    clock: FakeClock
    model: FakeStepModel
    served: ServedModel
    sink: GaugeSink
    sched: TextTask
    rounds: list[float] = field(default_factory=list)

    def submit(self, h: RequestHandle) -> RequestHandle:
        self.sched.reserve(h.size)
        self.sched.submit(h)
        return h

    def round(self) -> None:
        assert self.sched.run_once()

    def drain(self) -> None:
        for _ in range(100):
            if not self.sched.pending and not self.sched.cohorts:
                return
            self.round()
        raise AssertionError("the engine never went idle")


def rig(tmp_path: Path, max_batch_size: int = 4, catch_up_rounds: int = 0) -> Rig:
    clock = FakeClock()
    model = FakeStepModel(clock)
    srv = served(model, tmp_path)
    sink = GaugeSink()
    cfg = EngineConfig(models=(), max_batch_size=max_batch_size, admit_wait_rounds=1000,
                       catch_up_rounds=catch_up_rounds, parallel_steps=1, max_queue_delay_ms=0.0)
    sched = TextTask({"fake": srv}, cfg, sink, clock=clock)
    return Rig(clock, model, srv, sink, sched)


@pytest.fixture()
def r(tmp_path: Path) -> Iterator[Rig]:
    yield rig(tmp_path)


async def test_admission_fills_max_batch_rows_and_splits_a_request_across_rounds(r: Rig
                                                                                   ) -> None:
    h1 = r.submit(handle([1, 2, 3], r.clock, name="a"))
    h2 = r.submit(handle([4, 5, 6], r.clock, name="b"))
    r.round()
    assert r.sched.active_rows() == 4 and r.sched.pending_rows == 2  # h2's first row admitted
    for _ in range(K - 1):
        r.round()
    await settle()
    assert [x.exit_layer for x in await h1.future] == [K] * 3 and not h2.future.done()
    r.drain()
    assert r.model.calls == [(k, 4) for k in range(1, K + 1)] + [(k, 2) for k in range(1, K + 1)]
    assert [x.label_id for x in await h2.future] == [0, 1, 0]  # rows in request order


async def test_cohorts_of_one_model_at_one_layer_share_each_step(r: Rig) -> None:
    plain = r.submit(handle([1, 2], r.clock, "maxprob", "plain", params={"threshold": 0.99999}))
    early = r.submit(handle([3, 4], r.clock, "maxprob", "early"))  # 0.9: confident at exit 1
    r.round()
    assert r.model.calls == [(1, 4)]  # two policies, two cohorts, one merged step
    r.drain()
    assert r.model.calls == [(1, 4), (2, 2), (3, 2), (4, 2)]
    await settle()
    assert [x.exit_layer for x in await early.future] == [1, 1]
    assert [x.exit_layer for x in await plain.future] == [K, K]


async def test_a_younger_cohort_catches_up_and_merges_at_the_same_layer(tmp_path: Path) -> None:
    r = rig(tmp_path, max_batch_size=8, catch_up_rounds=6)
    first = r.submit(handle([1, 2], r.clock, name="first"))
    r.round()
    second = r.submit(handle([3, 4], r.clock, name="second"))
    r.round()  # the newcomer runs layer 1; the older cohort (at layer 1) waits for it
    assert [(c.layer, len(c)) for c in r.sched.cohorts] == [(1, 4)]
    r.drain()
    assert r.model.calls == [(1, 2), (1, 2), (2, 4), (3, 4), (4, 4)]
    await settle()
    assert len(await first.future) == len(await second.future) == 2


async def test_a_budget_row_leaves_at_the_deepest_exit_the_estimate_allows(r: Rig) -> None:
    """2 rows cost 3 units a layer; the seed says 3 too: after exits 1 and 2 (t = 3, 6) one
    more layer fits a 10-unit budget, after exit 3 (t = 9) it would end at 12: forced out."""
    h = r.submit(handle([1, 2], r.clock, budget_units=10))
    r.drain()
    await settle()
    out = await h.future
    assert [(x.exit_layer, x.budget_forced) for x in out] == [(3, True), (3, True)]
    assert out[0].compute_ms == round(9 * U * 1e3, 3) <= 10 * U * 1e3
    assert r.model.calls == [(1, 2), (2, 2), (3, 2)]


async def test_the_budget_estimate_follows_the_batch_size_not_a_stale_average(r: Rig) -> None:
    r.submit(handle([1, 2, 3, 4], r.clock, name="warm4"))  # 5 units a layer at 4 rows
    r.drain()
    r.submit(handle([1], r.clock, name="warm1"))  # 2 units a layer at 1 row
    r.drain()
    cost = r.served.step_cost
    assert (cost.estimate(4), cost.estimate(1)) == (5 * U, 2 * U)
    assert cost.seconds < 5 * U  # the plain average would let the row below run a layer late
    budget = r.submit(handle([5], r.clock, name="budget", budget_units=12))
    others = r.submit(handle([6, 7, 8], r.clock, name="others"))
    r.drain()
    await settle()
    [row] = await budget.future
    # t = 5: 5 + 5 <= 12 stays; t = 10: 10 + 5 > 12 leaves at exit 2 (a stale 2-unit average
    # would have kept it: 10 + 2 <= 12, answered at 15 > 12)
    assert (row.exit_layer, row.budget_forced, row.compute_ms) == (2, True,
                                                                   round(10 * U * 1e3, 3))
    assert [x.exit_layer for x in await others.future] == [K] * 3
    alone = r.submit(handle([9], r.clock, name="alone", budget_units=12))
    r.drain()
    await settle()
    [row] = await alone.future  # 1 row: 2 units a layer, every exit fits (t = 8 at exit 4)
    assert (row.exit_layer, row.budget_forced) == (K, False)


async def test_an_expired_request_is_answered_504_and_the_others_lose_nothing(r: Rig) -> None:
    late = r.submit(handle([1, 2], r.clock, name="late", deadline_units=5))
    ok = r.submit(handle([3, 4], r.clock, name="ok"))
    queued = r.submit(handle([5], r.clock, name="queued", deadline_units=3))  # batch full
    r.drain()
    await settle()
    with pytest.raises(DeadlineExceeded, match="late passed its deadline"):
        await late.future
    with pytest.raises(DeadlineExceeded, match="queued passed its deadline while queued"):
        await queued.future
    assert [(x.label_id, x.exit_layer) for x in await ok.future] == [(1, K), (0, K)]
    # t = 5 after layer 1 is not past 5; the 504 comes after layer 2 (t = 10), then 2 rows run
    assert r.model.calls == [(1, 4), (2, 4), (3, 2), (4, 2)]
    assert r.sched.idle() and r.sched.pending_rows == 0


async def test_a_cancelled_row_leaves_between_layers_and_the_rest_go_on(r: Rig) -> None:
    gone = r.submit(handle([1, 2], r.clock, name="gone"))
    stays = r.submit(handle([3, 4], r.clock, name="stays"))
    r.round()
    gone.cancel()  # the client went away after layer 1
    r.drain()
    await settle()
    assert r.model.calls == [(1, 4), (2, 2), (3, 2), (4, 2)]
    assert not gone.future.done()  # nobody is waiting for it: no answer is built
    assert [x.label_id for x in await stays.future] == [1, 0]
    assert r.sched.idle()


async def test_out_of_memory_splits_the_batch_and_retries_the_halves(r: Rig) -> None:
    r.model.oom_above = 2
    h = r.submit(handle([1, 2, 3, 4], r.clock))
    r.round()  # the 4-row step fails: nothing is lost, the cohort comes back split
    assert r.model.calls == [] and r.sched.row_cap == 2
    assert [len(c) for c in r.sched.cohorts] == [2, 2]
    r.drain()
    assert r.model.calls == [(k, 2) for k in range(1, K + 1) for _ in range(2)]
    await settle()
    assert [x.label_id for x in await h.future] == [1, 0, 1, 0]


async def test_out_of_memory_on_a_single_row_fails_only_that_request(r: Rig) -> None:
    r.model.oom_above = 0
    h = r.submit(handle([1], r.clock))
    r.drain()
    await settle()
    with pytest.raises(InternalError, match="quote request id r"):
        await h.future


async def test_gauges_are_true_in_flight_and_zero_at_rest(r: Rig) -> None:
    r.submit(handle([1, 2, 3, 4, 5], r.clock))
    assert r.sink.queue == []  # published by the worker (at its next schedule), not by submit
    r.round()
    assert (r.sink.queue[-1], r.sink.active[-1]) == (1, 4)
    r.drain()
    assert (r.sink.queue[-1], r.sink.active[-1]) == (0, 0)


async def test_lifecycle_reserve_close_drop_stop(r: Rig) -> None:
    with pytest.raises(Overloaded, match=r"queue full: 0 texts waiting, limit 256"):
        r.sched.reserve(257)
    waiting = r.submit(handle([1], r.clock, name="w"))
    r.sched.close()
    with pytest.raises(NotReady, match="shutting down"):
        r.sched.reserve(1)
    assert not r.sched.idle()
    r.sched.drop_everything("server shut down before the request finished")
    await settle()
    with pytest.raises(NotReady, match="shut down before the request finished"):
        await waiting.future
    r.sched.stop()
    assert not r.sched.run_once()  # the worker returns
