"""A fake step model and a fake clock for scheduler tests (no torch model, exact arithmetic).

Time is counted in units of U = 2**-10 s, so every sum of costs is exact in floating point.
A layer step over B rows costs `a + b * B` units, paid by advancing the fake clock.
Row id r (the first token of its text) is confident from exit `r // 10` on (maxprob fires
there) and always answers class `r % 2`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.base import Encoded, StepOutput
from models.loading import LoadedModel
from policies import ExitPolicy, build_policy
from service.engine.cost import StepCost
from service.engine.handles import PolicyKey, RequestHandle
from service.engine.served import ServedModel

U = 2.0 ** -10  # one time unit, seconds
K = 4  # exits of the fake model


@dataclass
class FakeClock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeBatch:
    """Row ids at a layer: enough of a MergeableBatch for the engine."""

    ids: torch.Tensor  # (B,) long
    layer: int

    def __len__(self) -> int:
        return len(self.ids)

    def filter(self, keep: torch.Tensor) -> FakeBatch:
        return FakeBatch(self.ids[keep], self.layer)

    @classmethod
    def concatenate(cls, batches: Sequence[FakeBatch]) -> FakeBatch:
        assert len({b.layer for b in batches}) == 1, "merged batches share a layer"
        return cls(torch.cat([b.ids for b in batches]), batches[0].layer)


@dataclass
class FakeStepModel:
    clock: FakeClock
    a: float = 1.0  # fixed units per layer step
    b: float = 1.0  # units per row per layer step
    num_exits: int = K
    oom_above: int | None = None  # steps over this many rows raise out-of-memory
    calls: list[tuple[int, int]] = field(default_factory=list)  # (layer, rows) per step
    device: str = "cpu"
    backend: str = "torch"

    def embed(self, enc: Encoded) -> FakeBatch:
        return FakeBatch(enc.input_ids[:, 0].clone(), 0)

    def _pay(self, batch: FakeBatch, k: int) -> None:
        assert k == batch.layer + 1, "layers run in order"
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise torch.OutOfMemoryError(f"fake: {len(batch)} rows")
        self.calls.append((k, len(batch)))
        self.clock.t += (self.a + self.b * len(batch)) * U

    def advance(self, batch: FakeBatch, k: int) -> FakeBatch:
        self._pay(batch, k)
        return FakeBatch(batch.ids, k)

    def step(self, batch: FakeBatch, k: int) -> StepOutput:
        self._pay(batch, k)
        ids = batch.ids
        confident = (ids // 10) <= k  # (B,)
        logits = torch.zeros(len(ids), 2)  # (B, 2): uniform until confident
        logits[torch.arange(len(ids)), ids % 2] = torch.where(confident, 10.0, 0.0)
        return StepOutput(logits=logits, batch=FakeBatch(ids, k))


def served(model: FakeStepModel, tmp_path: Path, seed_units: float = 3.0) -> ServedModel:
    loaded = LoadedModel("fake", "text-classifier", model, {"labels": ["even", "odd"]},
                         tmp_path)
    return ServedModel(loaded, "none", "cpu", StepCost(seed_units * U))


def handle(ids: list[int], clock: FakeClock, policy: str = "none", name: str = "r",
           deadline_units: float = 1e9, budget_units: float | None = None,
           params: dict[str, float] | None = None) -> RequestHandle:
    """A classify request for texts whose first token ids are `ids` (arrives now)."""
    n = len(ids)
    enc = Encoded(torch.tensor([[i, 0] for i in ids]), torch.ones(n, 2, dtype=torch.long),
                  [2] * n, [False] * n)
    p = dict(params or ({"threshold": 0.9} if policy == "maxprob" else {}))
    loop = asyncio.get_running_loop()
    key = PolicyKey(policy, tuple(sorted(p.items())))
    return RequestHandle(model="fake", policy=key, policy_obj=_policy(key), encoded=enc,
                         future=loop.create_future(), loop=loop, request_id=name,
                         arrival=clock.t, deadline=clock.t + deadline_units * U,
                         budget_s=None if budget_units is None else budget_units * U,
                         return_trace=False)


@functools.cache
def _policy(key: PolicyKey) -> ExitPolicy:
    """One policy object per key, as the served model's cache gives (cohorts merge by it)."""
    return build_policy(key.name, K, dict(key.params))


async def settle() -> None:
    """Let the answers queued with call_soon_threadsafe reach their futures."""
    for _ in range(3):
        await asyncio.sleep(0)
