"""Rows no policy may let out early run the whole model in one runtime call.

A cohort whose policy cannot exit before the last layer (`first_exit() >= K`: `none`, `static`
at K), with no row asking for a trace or carrying a latency budget, would otherwise take K+1
calls (embeddings, then one graph per layer) where the model offers one (`run_whole`: the ONNX
backend's `whole.onnx`, models/onnx_backend.py). The text task admits such rows as a cohort of
tokens (`TokenRows`, not embedded) and runs it as one job of its round (`whole_group`, beside
the round's layer calls, on the step pool when there is one); the step's outcome is the usual
`update` at the last exit, so the last-exit rule, results, metrics and shadow bookkeeping are
those of every other step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from models.base import Encoded, MergeableBatch
from service.engine.served import ServedModel


@dataclass(frozen=True)
class AtLastExit:
    """Stands for the rows' batch after the last layer: nothing steps it again (every row
    leaves at the last exit), so it holds no hidden states."""

    layer: int
    rows: int

    def __len__(self) -> int:
        return self.rows


@dataclass(frozen=True)
class TokenRows:
    """A cohort's rows before any layer, as tokens: what `run_whole` takes. A batch object
    like the backends' (`filter`, `concatenate`), at layer 0."""

    enc: Encoded
    layer: int = 0

    def __len__(self) -> int:
        return len(self.enc.lengths)

    def filter(self, keep: torch.Tensor | Sequence[bool]) -> TokenRows:
        sel = torch.as_tensor(keep, dtype=torch.bool)  # (B,)
        lengths = [n for n, k in zip(self.enc.lengths, sel.tolist(), strict=True) if k]
        t = max(lengths, default=0)
        return TokenRows(Encoded(self.enc.input_ids[sel, :t], self.enc.attention_mask[sel, :t],
                                 lengths, [x for x, k in zip(self.enc.truncated, sel.tolist(),
                                                             strict=True) if k]))

    @classmethod
    def concatenate(cls, batches: Sequence[TokenRows]) -> TokenRows:
        return cls(join_encoded([b.enc for b in batches]))


def whole_group(model: Any, cohorts: Sequence[Any]) -> list[tuple[torch.Tensor, MergeableBatch]]:
    """The whole model for token cohorts in one call; per cohort its last-exit logits (B_i, C)
    and the batch after the last layer."""
    merged = join_encoded([c.batch.enc for c in cohorts])
    logits = model.run_whole(merged)  # (sum B_i, C)
    sizes = [len(c) for c in cohorts]
    k = int(model.num_exits)
    return [(part, cast(MergeableBatch, AtLastExit(k, n)))
            for part, n in zip(torch.split(logits, sizes), sizes, strict=True)]


def one_call(served: ServedModel, policy: Any, handles: Sequence[Any]) -> bool:
    """Whether these rows take the one-call path on this model."""
    model = served.text_model
    if not getattr(model, "has_whole", False):
        return False
    if int(policy.first_exit()) < served.num_exits:
        return False
    return not any(h.return_trace or h.budget_s is not None for h in handles)


def join_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Token batches as one, right-padded to the longest (mask 0 on the padding)."""
    if len(parts) == 1:
        return parts[0]
    t = max(int(p.input_ids.shape[1]) for p in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - int(x.shape[1])))  # (B_i, t)

    return Encoded(torch.cat([pad(p.input_ids) for p in parts]),  # (sum B_i, t)
                   torch.cat([pad(p.attention_mask) for p in parts]),
                   [n for p in parts for n in p.lengths],
                   [x for p in parts for x in p.truncated])
