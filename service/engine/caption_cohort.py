"""Caption requests and their batch object: `CaptionHandle` (one request's images and events),
`CaptionRow` (one image's caption so far) and `CaptionCohort` (captions of one model and policy
decoded together; shrinks with `filter`, grows with `concatenate`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch

from models.captioner import CaptionState
from policies import ExitPolicy
from service.engine.handles import Handle, PolicyKey
from service.engine.served import ServedModel
from service.protocol import CaptionEvent, EngineError


# ---- requests -----------------------------------------------------------------------------------
@dataclass(eq=False, kw_only=True)
class CaptionHandle(Handle):
    """One caption request: its images, where its events go, and its per-image progress."""

    served: ServedModel
    pixels: torch.Tensor  # (n, 3, S, S) preprocessed images
    max_tokens: int
    events: asyncio.Queue[CaptionEvent | EngineError]
    stream_tokens: bool = False  # emit an event per token (streaming answers)
    remaining: int = 0
    admitted_at: float = 0.0

    def __post_init__(self) -> None:
        self.remaining = int(self.pixels.shape[0])

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])

    def emit(self, ev: CaptionEvent | EngineError) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ev)

    def complete(self, ev: CaptionEvent) -> None:
        """One image's caption is final; the request is done after its last image."""
        self.emit(ev)
        self.remaining -= 1
        if self.remaining == 0:
            self.done = True

    def _deliver_error(self, error: EngineError) -> None:
        self.emit(error)


@dataclass
class CaptionRow:
    handle: CaptionHandle
    index: int  # image index within the request
    started: float  # admission time (before image encoding)
    tokens: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    first_token_at: float | None = None


@dataclass
class CaptionCohort:
    """A batch object: captions of one model and policy decoded together, one token a step;
    `state` and `rows` are row-aligned. Built by `start`, `filter` and `concatenate` only."""

    served: ServedModel
    key: PolicyKey
    policy: ExitPolicy
    state: CaptionState
    rows: list[CaptionRow]

    @classmethod
    def start(cls, h: CaptionHandle, state: CaptionState, t: float) -> CaptionCohort:
        """A request's images, encoded (`state`), as a cohort admitted at `t`."""
        return cls(h.served, h.policy, h.policy_obj, state,
                   [CaptionRow(h, i, t) for i in range(h.size)])

    @classmethod
    def concatenate(cls, cohorts: list[CaptionCohort]) -> CaptionCohort:
        """Cohorts of one model and policy as one (new captions join between tokens)."""
        if len(cohorts) == 1:
            return cohorts[0]
        first = cohorts[0]
        return cls(first.served, first.key, first.policy,
                   CaptionState.concatenate([c.state for c in cohorts]),
                   [r for c in cohorts for r in c.rows])

    def filter(self, keep: list[bool]) -> CaptionCohort | None:
        """The rows where `keep` is true (None when none are)."""
        if all(keep):
            return self
        if not any(keep):
            return None
        return CaptionCohort(self.served, self.key, self.policy,
                             self.state.filter(torch.tensor(keep, dtype=torch.bool)),
                             [r for r, k in zip(self.rows, keep, strict=True) if k])

    def __len__(self) -> int:
        return len(self.rows)
