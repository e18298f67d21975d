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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

B = TypeVar("B", bound="ExitBatch")


class ExitBatch(Protocol):
    """Rows of in-flight samples that can leave (`filter`) between steps.

    `layer` is how many encoder layers the rows have been through (0 = embeddings only).
    Backends keep the hidden states in their own array type (torch tensor, numpy array);
    the engine only filters, concatenates and counts.
    """

    layer: int

    def __len__(self) -> int: ...

    def filter(self: B, keep: torch.Tensor) -> B:
        """Return the batch with only the rows where `keep` (bool, shape (B,)) is True."""
        ...


M = TypeVar("M", bound="MergeableBatch")


class MergeableBatch(ExitBatch, Protocol):
    """A batch the engine can also grow: same-layer batches merge into one step (TGI's
    `Batch.concatenate`). Text batches of every backend are mergeable."""

    @classmethod
    def concatenate(cls: type[M], batches: Sequence[M]) -> M:
        """Merge batches at the same layer (rows in order)."""
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


def common_layer(batches: Sequence[ExitBatch]) -> int:
    """The layer every batch is at (ValueError when there are none or they differ): what
    `concatenate` checks before merging."""
    if not batches:
        raise ValueError("concatenate needs at least one batch")
    layers = {b.layer for b in batches}
    if len(layers) != 1:
        raise ValueError(f"cannot concatenate batches at different layers {sorted(layers)}")
    return batches[0].layer


def stepwise_exit_logits(model: StepModel, enc: Encoded) -> torch.Tensor:
    """(B, L, C) logits of every exit through a step model's own `embed` / `step` path (no row
    leaves): what `all_exit_logits` is on every backend."""
    batch = model.embed(enc)
    outs = []
    for k in range(1, model.num_exits + 1):
        out = model.step(batch, k)
        outs.append(out.logits)
        batch = out.batch
    return torch.stack(outs, dim=1)  # (B, L, C)


@runtime_checkable
class StepModel(Protocol):
    """The execution seam between the engine and a runtime (torch eager, ONNX Runtime, ...).

    The engine, the offline replays and the benchmarks talk to every backend through this:

        enc = model.encode(texts)                 # tokenise (host)
        batch = model.embed(enc)                  # layer-0 state, backend's own arrays
        out = model.step(batch, k)                # encoder layer k + exit head k: logits (B, C)
        batch = model.advance(batch, k)           # layer k without its head
        type(batch).concatenate([...]) / batch.filter(keep)

    `backend` and `precision` say what runs ("torch"/"onnx", "fp32"/"fp16"/"int8"); exit
    logits are always float torch tensors on `device`, so policies run unchanged.
    """

    backend: str
    tokenizer: Any
    config: Any  # TextClassifierConfig: num_labels, max_length

    @property
    def precision(self) -> str: ...

    @property
    def num_exits(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Encoded: ...

    def embed(self, enc: Encoded) -> Any: ...

    def step(self, batch: Any, k: int) -> StepOutput: ...

    def advance(self, batch: Any, k: int) -> Any: ...

    def all_exit_logits(self, enc: Encoded) -> torch.Tensor:
        """(B, L, C) logits of every exit, through the stepwise path."""
        ...
