"""One caption token, decoded layer by layer with a per-token early exit (used by the caption
task, service/engine/caption_task.py, and by `bench.caption`).

    decode_token: one token for every row of a CaptionState, layer by layer. After each decoder
                  layer the policy decides per row; exited rows take their token, leave the token
                  batch and get their skipped layers' K/V by state propagation (CALM); the last
                  layer always fires; a per-token latency budget forces an exit when one more
                  layer would not fit (the step-cost estimate, service/engine/cost.py).

The model never sees the policy and the policy never sees the model (models/captioner.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from models.captioner import CaptionState, MultiExitCaptioner, TokenBatch
from policies import ExitPolicy
from policies.base import decide
from service.engine.cost import StepCost
from service.protocol import TokenInfo


# ---- one token --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenStep:
    """What one decoding step decided for every row of the state."""

    tokens: torch.Tensor  # (B,) token ids
    exit_layer: torch.Tensor  # (B,) long, 1-based
    forced: torch.Tensor  # (B,) bool: the latency budget, not the policy, made it exit
    propagated: int  # skipped-layer K/V projections computed (state propagation)
    layer_seconds: list[float]  # wall time of each decoder layer step run
    layer_rows: list[int]  # rows in each of those steps
    propagate_seconds: float  # wall time of state propagation
    checks: list[tuple[int, bool]] = field(default_factory=list)  # shadow: (exit, agreed)


def shadow_token_checks(model: MultiExitCaptioner, ex: TokenBatch, early: torch.Tensor,
                        check: torch.Tensor) -> list[tuple[int, bool]]:
    """Per-token shadow check: the rows of `ex` (just exited at layer `ex.layer`) where `check`
    run on to the last layer; (exit, agreed) per checked row, agreed when the last layer's token
    equals the early one. Call before `model.propagate(ex)`: these steps write the real K/V of
    the skipped layers, and propagation then overwrites them, so the state is as without it."""
    if not bool(check.any()) or ex.layer >= model.num_exits:
        return []
    tb = ex.filter(check)
    logits = None
    for j in range(ex.layer + 1, model.num_exits + 1):
        out = model.step(tb, j)
        tb, logits = out.batch, out.logits  # type: ignore[assignment]
    assert logits is not None
    final = logits.float().argmax(dim=-1).cpu()  # (c,)
    agreed = (final == early[check.cpu()].cpu()).tolist()
    return [(ex.layer, bool(a)) for a in agreed]


def decode_token(model: MultiExitCaptioner, state: CaptionState, policy: ExitPolicy,
                 budget_s: torch.Tensor | None = None, layer_cost_s: float | StepCost = 0.0,
                 shadow: torch.Tensor | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> TokenStep:
    """Decide the next token of every row (see module docstring); advances `state` in place.
    `budget_s` (B,): per-token budgets; a row leaves after layer k when the time spent on this
    token plus one more layer (`layer_cost_s`: a fixed time, or the step-cost tracker's estimate
    for the rows still decoding) would pass it. `shadow` (B,) bool: rows whose token, if it
    exits early, is checked against the last layer (`shadow_token_checks`)."""
    b, L = len(state), model.num_exits
    tokens = torch.empty(b, dtype=torch.long, device=state.pos.device)
    exit_layer = torch.zeros(b, dtype=torch.long)
    forced = torch.zeros(b, dtype=torch.bool)
    start = clock()
    tb = model.embed(state)
    pstate = policy.init_state(b, "cpu")
    secs, rows, prop_s, propagated = [], [], 0.0, 0
    checks: list[tuple[int, bool]] = []
    for k in range(1, L + 1):
        t0 = clock()
        out = model.step(tb, k)
        tb = out.batch  # type: ignore[assignment]
        logits = out.logits.float().cpu()  # (b', V')
        secs.append(clock() - t0)
        rows.append(len(tb))
        late = None
        if budget_s is not None and k < L:
            spent = clock() - start
            late = (spent + layer_estimate(layer_cost_s, len(tb))) > \
                budget_s[tb.rows.cpu()]  # (b',)
        v = decide(policy, pstate, k, logits, L, late)
        d, mask = v.decision, v.exit_mask
        if late is not None:
            forced[tb.rows.cpu()[v.forced]] = True
        if bool(mask.any()):
            ex = tb.filter(mask)
            tokens[ex.rows] = model.token_ids(d.prediction[mask])
            exit_layer[ex.rows.cpu()] = k
            if shadow is not None and k < L:  # [shadow] before propagation overwrites K/V
                checks += shadow_token_checks(model, ex, d.prediction[mask],
                                              shadow[ex.rows.cpu()])
            t1 = clock()
            propagated += model.propagate(ex)
            prop_s += clock() - t1
            tb = tb.filter(~mask)
            pstate = d.state.filter(~mask)
        else:
            pstate = d.state
        if len(tb) == 0:
            break
    model.advance(state, tokens)
    return TokenStep(tokens.cpu(), exit_layer, forced, propagated, secs, rows, prop_s, checks)


def layer_estimate(cost: float | StepCost, rows: int) -> float:
    return cost.estimate(rows) if isinstance(cost, StepCost) else cost


@torch.inference_mode()
def warm_up(model: MultiExitCaptioner) -> None:
    """One token through every layer on a blank image (first-call allocations, lazy caches)."""
    size = model.config.image.size
    state = model.encode_images(torch.zeros(1, 3, size, size), capacity=2)
    tb = model.embed(state)
    for k in range(1, model.num_exits + 1):
        tb = model.step(tb, k).batch  # type: ignore[assignment]


def caption_text(model: MultiExitCaptioner, ids: list[int]) -> str:
    return str(model.tokenizer.decode(ids, skip_special_tokens=True)).strip()


def token_info(model: MultiExitCaptioner, token: int, layer: int) -> TokenInfo:
    return TokenInfo(text=str(model.tokenizer.decode([token])), token_id=token, exit_layer=layer)
