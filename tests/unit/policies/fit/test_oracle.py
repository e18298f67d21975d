"""Offline oracles: first correct exit, first exit consistent with the last one."""

from __future__ import annotations

import pytest
import torch

from policies import PolicyError, build_policy
from policies.fit.oracle import ORACLES, consistency_oracle_exits, label_oracle_exits

Logits = tuple[torch.Tensor, torch.Tensor]


def _onehot(preds: list[list[int]]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), 2).double() * 3  # (N, K, 2)


def test_label_oracle_takes_the_first_correct_exit() -> None:
    logits = _onehot([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    labels = torch.tensor([0, 0, 0])
    assert label_oracle_exits(logits, labels).tolist() == [2, 3, 3]  # none right: the last exit


def test_consistency_oracle_waits_for_a_stable_suffix() -> None:
    logits = _onehot([[0, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]])
    assert consistency_oracle_exits(logits).tolist() == [3, 2, 1, 3]


def test_oracles_bound_the_online_policies(val_logits: Logits) -> None:
    logits, labels = val_logits
    label = ORACLES["oracle-label"].replay(logits, labels)
    consistent = ORACLES["oracle-consistency"].replay(logits, labels)
    assert consistent.agreement() == 1.0  # keeps the last exit's accuracy exactly
    assert consistent.accuracy() == consistent.last_accuracy()
    assert label.accuracy() >= consistent.accuracy()
    any_right = (logits.argmax(-1) == labels.unsqueeze(1)).any(1)  # (N,)
    assert label.accuracy() == pytest.approx(float(any_right.double().mean()))
    assert bool((label.exit_layer[~any_right] == 6).all())


def test_label_oracle_needs_labels_and_oracles_are_not_servable() -> None:
    with pytest.raises(PolicyError, match="needs labels"):
        ORACLES["oracle-label"].replay(torch.zeros(2, 3, 2), None)
    with pytest.raises(PolicyError, match="unknown policy 'oracle-label'"):
        build_policy("oracle-label", 3)
