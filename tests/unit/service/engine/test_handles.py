"""RequestHandle: one future per request, resolved exactly once (all rows, or the first error)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from models.base import Encoded
from policies import build_policy
from service.engine.handles import PolicyKey, RequestHandle, now
from service.protocol import ClassifyResult, DeadlineExceeded, InternalError


def _result(label_id: int) -> ClassifyResult:
    return ClassifyResult(label=str(label_id), label_id=label_id, probabilities=[0.5, 0.5],
                          exit_layer=1, num_layers=3, confidence=0.5, budget_forced=False,
                          truncated=False, queue_ms=0.0, compute_ms=0.0, total_ms=0.0)


def _handle(loop: asyncio.AbstractEventLoop, rows: int = 2, deadline_s: float = 10.0
            ) -> RequestHandle:
    ids = torch.ones(rows, 4, dtype=torch.long)  # (rows, T)
    enc = Encoded(ids, torch.ones_like(ids), [4] * rows, [False] * rows)
    t = now()
    return RequestHandle(model="m", policy=PolicyKey("none", ()),
                         policy_obj=build_policy("none", 3), encoded=enc,
                         future=loop.create_future(), loop=loop, request_id="r",
                         arrival=t, deadline=t + deadline_s, budget_s=None, return_trace=False)


async def _settle() -> None:
    """Let the callbacks queued with call_soon_threadsafe run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_resolves_once_every_row_is_in_with_rows_in_order() -> None:
    h = _handle(asyncio.get_running_loop(), rows=2)
    assert (h.size, h.remaining, h.pending_rows) == (2, 2, 2)
    h.set_row(1, _result(1))
    await _settle()
    assert not h.future.done() and h.remaining == 1
    h.set_row(0, _result(0))
    assert [r.label_id for r in await h.future] == [0, 1]
    assert h.done


async def test_rows_after_resolution_are_ignored() -> None:
    h = _handle(asyncio.get_running_loop(), rows=1)
    h.set_row(0, _result(0))
    h.set_row(0, _result(7))
    assert [r.label_id for r in await h.future] == [0]


async def test_first_error_wins_and_later_rows_are_dropped() -> None:
    h = _handle(asyncio.get_running_loop(), rows=2)
    h.fail(DeadlineExceeded("too late", "deadline_ms"))
    h.fail(InternalError("second error"))
    h.set_row(0, _result(0))
    with pytest.raises(DeadlineExceeded, match="too late"):
        await h.future
    assert h.results == [None, None]


async def test_cancel_stops_the_handle_without_resolving_it() -> None:
    h = _handle(asyncio.get_running_loop(), rows=1)
    h.cancel()
    h.set_row(0, _result(0))
    await _settle()
    assert h.done and not h.future.done()


async def test_a_cancelled_future_is_left_alone() -> None:
    h = _handle(asyncio.get_running_loop(), rows=1)
    h.future.cancel()
    h.set_row(0, _result(0))  # resolving a cancelled future must not raise on the loop
    await _settle()
    assert h.future.cancelled()


async def test_pending_rows_and_expiry() -> None:
    h = _handle(asyncio.get_running_loop(), rows=3, deadline_s=1.0)
    h.next_row = 2
    assert h.pending_rows == 1
    assert not h.expired(h.arrival + 0.5)
    assert h.expired(h.arrival + 1.5)


def test_policy_keys_with_equal_params_are_equal() -> None:
    a = PolicyKey("maxprob", (("threshold", 0.9),))
    assert a == PolicyKey("maxprob", (("threshold", 0.9),))
    assert a != PolicyKey("maxprob", (("threshold", 0.8),))
    assert len({a, PolicyKey("maxprob", (("threshold", 0.9),))}) == 1
