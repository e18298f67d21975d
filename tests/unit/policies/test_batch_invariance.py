"""A vectorised step decides exactly as each row alone would (hypothesis property, all policies).

Also: splitting a batch, filtering exited rows and concatenating states (what the engine does)
changes nothing, and a whole replay is independent of its batch size.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import ExitPolicy, PolicyState, build_policy, enforce_last_exit
from policies.replay import replay

ONLINE = ["beem", "eenet", "maxprob", "entropy", "patience", "static", "none"]


def _params(name: str, k: int, c: int, g: torch.Generator) -> dict[str, Any]:
    def u() -> float:
        return float(torch.rand(1, generator=g))

    if name == "beem":
        w = [u() for _ in range(k)]
        return {"weights": w, "thresholds": [u() * sum(w) if u() > 0.2 else None
                                             for _ in range(k)],
                "reset": "weighted" if u() > 0.5 else "zero"}
    if name == "eenet":
        return {"a": torch.randn(k, c, generator=g).tolist(),
                "b": [torch.randn(j + 1, generator=g).tolist() for j in range(1, k + 1)],
                "thresholds": [float(torch.randn(1, generator=g)) if u() > 0.2 else None
                               for _ in range(k)]}
    if name in ("maxprob", "entropy"):
        return {"thresholds": [u() for _ in range(k)]}
    if name == "patience":
        return {"patience": int(torch.randint(1, k + 1, (1,), generator=g))}
    if name == "static":
        return {"layer": int(torch.randint(1, k + 1, (1,), generator=g))}
    return {}


def _logits(b: int, k: int, c: int, scale: float, ties: bool, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(b, k, c, generator=g) * scale  # (B, K, C)
    return x.round() if ties else x  # rounding makes equal logits and repeated argmaxes


def _alone(pol: ExitPolicy, logits: torch.Tensor) -> list[list[tuple[bool, int, float]]]:
    """Per row, per exit: (exit, prediction, score) with the row stepped on its own."""
    out = []
    for row in logits:
        state, trail = pol.init_state(1), []
        for k in range(1, pol.num_exits + 1):
            d = pol.step(state, k, row[k - 1].unsqueeze(0))
            trail.append((bool(d.exit_mask[0]), int(d.prediction[0]), float(d.score[0])))
            state = d.state
        out.append(trail)
    return out


def _batched(pol: ExitPolicy, logits: torch.Tensor) -> list[list[tuple[bool, int, float]]]:
    state = pol.init_state(logits.shape[0])
    cols = []
    for k in range(1, pol.num_exits + 1):
        d = pol.step(state, k, logits[:, k - 1])
        cols.append(list(zip(d.exit_mask.tolist(), d.prediction.tolist(), d.score.tolist(),
                             strict=True)))
        state = d.state
    return [[(bool(e), int(p), float(s)) for e, p, s in row] for row in zip(*cols, strict=True)]


# batch size, exits, classes, logit scale, integer logits (ties), seed
CASES = st.tuples(st.integers(1, 12), st.integers(1, 6), st.integers(1, 5),
                  st.sampled_from([0.01, 1.0, 5.0, 60.0]), st.booleans(),
                  st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("name", ONLINE)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_batched_step_equals_each_row_alone(name: str, case: tuple[Any, ...]) -> None:
    b, k, c, scale, ties, seed = case
    g = torch.Generator().manual_seed(seed)
    pol = build_policy(name, k, _params(name, k, c, g))
    logits = _logits(b, k, c, scale, ties, g)
    assert _batched(pol, logits) == _alone(pol, logits)


def _engine_run(pol: ExitPolicy, logits: torch.Tensor, split: int) -> dict[int, tuple[int, int]]:
    """The engine's loop on two cohorts that merge after exit 1: filter, concatenate, go on."""
    k_max = pol.num_exits
    rows = [torch.arange(split), torch.arange(split, logits.shape[0])]
    states: list[PolicyState] = [pol.init_state(len(r)) for r in rows]
    done: dict[int, tuple[int, int]] = {}
    for k in range(1, k_max + 1):
        new_rows, new_states = [], []
        for r, s in zip(rows, states, strict=True):
            d = enforce_last_exit(pol.step(s, k, logits[r, k - 1]), k, k_max)
            for i in r[d.exit_mask].tolist():
                done[i] = (k, int(d.prediction[(r == i).nonzero()[0, 0]]))
            new_rows.append(r[~d.exit_mask])
            new_states.append(d.state.filter(~d.exit_mask))
        if k == 1:  # cohorts at the same layer merge
            rows = [torch.cat(new_rows)]
            states = [type(new_states[0]).concatenate(new_states)]
        else:
            rows, states = new_rows, new_states
    return done


@pytest.mark.parametrize("name", ONLINE)
@settings(max_examples=30, deadline=None)
@given(case=CASES)
def test_filter_and_concatenate_change_nothing(name: str, case: tuple[Any, ...]) -> None:
    b, k, c, scale, ties, seed = case
    b = max(b, 2)
    g = torch.Generator().manual_seed(seed)
    pol = build_policy(name, k, _params(name, k, c, g))
    logits = _logits(b, k, c, scale, ties, g)
    res = replay(pol, logits, batch_size=1)
    expected = {i: (int(res.exit_layer[i]), int(res.prediction[i])) for i in range(b)}
    assert _engine_run(pol, logits, b // 2) == expected
    whole = replay(pol, logits)
    assert torch.equal(whole.exit_layer, res.exit_layer)
    assert torch.equal(whole.prediction, res.prediction)
