"""Cohort as a batch object: filter, concatenate, split keep batch, state and rows aligned."""

from __future__ import annotations

import asyncio

import torch

from service.engine.cohort import Cohort, Row
from tests.unit.service.engine.fakes import FakeBatch, FakeClock, handle


def _cohort(ids: list[int], policy: str = "maxprob") -> Cohort:
    h = handle(ids, FakeClock(), policy)
    rows = [Row(h, i, 0.0, None, None) for i in range(len(ids))]
    return Cohort.start("fake", policy, h.policy_obj, FakeBatch(torch.tensor(ids), 0), rows,
                        "cpu")


def _ids(c: Cohort) -> list[int]:
    return [int(x) for x in c.batch.ids]  # type: ignore[attr-defined]


async def test_filter_keeps_batch_state_and_rows_aligned() -> None:
    c = _cohort([10, 11, 12, 13])
    kept = c.filter([True, False, True, False])
    assert kept is not None and _ids(kept) == [10, 12]
    assert [r.index for r in kept.rows] == [0, 2]
    assert len(kept.state.rows) == 2  # type: ignore[attr-defined]
    assert c.filter([True] * 4) is c  # nothing left: no copies
    assert c.filter([False] * 4) is None


async def test_concatenate_then_split_gives_the_pieces_back_in_order() -> None:
    a, b = _cohort([1, 2, 3]), _cohort([4, 5])
    both = Cohort.concatenate([a, b])
    assert _ids(both) == [1, 2, 3, 4, 5]
    assert len(both) == 5 == len(both.state.rows)  # type: ignore[attr-defined]
    parts = both.split(2)
    assert [_ids(p) for p in parts] == [[1, 2], [3, 4], [5]]
    assert [[r.index for r in p.rows] for p in parts] == [[0, 1], [2, 0], [1]]
    assert both.split(5) == [both]
    assert Cohort.concatenate([a]) is a
    await asyncio.sleep(0)
