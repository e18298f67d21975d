"""Contracts shared by every multi-exit model: step outputs and batches that shrink.

A multi-exit model never decides to exit. It offers steps:

    batch = model.embed(encoded)            # layer 0 state, one row per sample
    out = model.step(batch, k)              # run encoder layer k (1-based) + exit head k
    out.logits                              # (B, C) logits of exit k
    batch = out.batch.filter(keep)          # exited rows leave between layers

The engine (service/engine) and the offline replays (policies/replay) own the loop and the rule
that the last exit always fires. Batch objects follow TGI's `Batch.filter` / `concatenate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

B = TypeVar("B", bound="ExitBatch")


class ExitBatch(Protocol):
    """Rows of in-flight samples that can leave (`filter`) or be merged (`concatenate`)."""

    def __len__(self) -> int: ...

    def filter(self: B, keep: torch.Tensor) -> B:
        """Return the batch with only the rows where `keep` (bool, shape (B,)) is True."""
        ...


@dataclass(frozen=True)
class StepOutput:
    """What one step returns: the logits of the exit just reached and the advanced batch."""

    logits: torch.Tensor  # (B, C) exit-head logits at this exit
    batch: ExitBatch  # the batch advanced by one layer (same rows, same order)


@dataclass(frozen=True)
class Encoded:
    """Tokenised input, already on the model's device."""

    input_ids: torch.Tensor  # (B, T) token ids, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 for real tokens, 0 for padding
    lengths: list[int]  # real token count per row (after truncation)
    truncated: list[bool]  # whether each text was cut to the model's max length
