"""Max-prob, entropy (DeeBERT), patience (PABEE), static depth and none (algorithms.md §C)."""

from __future__ import annotations

import math

import pytest
import torch

from policies import PolicyError, build_policy
from policies.base import normalised_entropy_confidence
from policies.replay import replay

# two rows, three exits, two classes: row 0 is confident and steady, row 1 flips then settles
LOGITS = torch.tensor([[[2.0, 0.0], [3.0, 0.0], [4.0, 0.0]],
                       [[0.0, 0.2], [0.3, 0.0], [1.0, 0.0]]])  # (2, 3, 2)


def _exits(name: str, params: dict[str, object]) -> list[int]:
    return replay(build_policy(name, 3, params), LOGITS).exit_layer.tolist()


def test_maxprob_fires_at_the_confidence_threshold() -> None:
    p = 1 / (1 + math.exp(-2.0))  # row 0's max probability at exit 1
    assert _exits("maxprob", {"threshold": p}) == [1, 3]
    assert _exits("maxprob", {"threshold": p + 1e-9}) == [2, 3]
    assert _exits("maxprob", {"thresholds": [None, 0.5, 0.99]}) == [2, 2]


def test_entropy_confidence_is_one_minus_normalised_entropy() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]], dtype=torch.float64)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert normalised_entropy_confidence(probs).tolist() == pytest.approx([0.0, 1.0, 1 - h])
    assert normalised_entropy_confidence(torch.ones(2, 1, dtype=torch.float64)).tolist() == [1, 1]


def test_entropy_policy_thresholds_that_confidence() -> None:
    p = torch.softmax(LOGITS[0, 0].double(), -1)
    conf = float(normalised_entropy_confidence(p.unsqueeze(0))[0])
    assert _exits("entropy", {"threshold": conf}) == [1, 3]
    assert _exits("entropy", {"threshold": conf + 1e-9}) == [2, 3]


def test_patience_counts_unchanged_argmaxes() -> None:
    assert _exits("patience", {"patience": 1}) == [2, 3]  # row 1 flips at exit 2
    assert _exits("patience", {"patience": 2}) == [3, 3]
    pol = build_policy("patience", 3, {"patience": 1})
    d = pol.step(pol.init_state(2), 1, LOGITS[:, 0])
    assert d.score.tolist() == [0.0, 0.0]


def test_static_and_none() -> None:
    assert _exits("static", {"layer": 2}) == [2, 2]
    assert _exits("static", {}) == [3, 3]
    assert _exits("none", {}) == [3, 3]
    res = replay(build_policy("static", 3, {"layer": 1}), LOGITS)
    assert res.prediction.tolist() == [0, 1]  # exit 1's argmax


def test_calibrated_values_are_used_and_requests_win() -> None:
    cal = {"params": {"threshold": 0.99}}
    assert build_policy("maxprob", 3, {}, cal).params()["thresholds"] == [0.99] * 3
    assert build_policy("maxprob", 3, {"threshold": 0.6}, cal).params()["thresholds"] == [0.6] * 3
    assert build_policy("patience", 3, {}, {"params": {"patience": 2}}).params() == \
        {"patience": 2}
    assert build_policy("static", 3, {}, {"params": {"layer": 1, "stale": 0}}).params() == \
        {"layer": 1}


@pytest.mark.parametrize(("name", "params", "message"), [
    ("maxprob", {"threshold": 1.5}, r"threshold=1.5 out of range \[0.0, 1.0\]"),
    ("maxprob", {"threshold": math.nan}, "threshold must be finite"),
    ("maxprob", {"thresholds": [0.5, 0.5]}, "needs 3 values"),
    ("maxprob", {"tau": 0.5}, r"unknown parameter\(s\) \['tau'\]"),
    ("entropy", {"threshold": -0.1}, "out of range"),
    ("patience", {"patience": 0}, r"patience=0 out of range \[1, 3\]"),
    ("patience", {"patience": 1.5}, "must be an integer, got 1.5"),
    ("static", {"layer": 4}, r"layer=4 out of range \[1, 3\]"),
    ("none", {"threshold": 0.5}, "unknown parameter"),
])
def test_bad_parameters_are_named(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        build_policy(name, 3, params)
