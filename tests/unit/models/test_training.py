from __future__ import annotations

import torch
import torch.nn.functional as F

from models.training import depth_weighted_loss


def test_depth_weighted_loss_is_the_weighted_mean_of_exit_ces() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 3)
    y = torch.randint(0, 3, (5,))
    ces = torch.stack([F.cross_entropy(logits[:, i], y) for i in range(4)])
    expected = (torch.arange(1, 5) * ces).sum() / 10
    torch.testing.assert_close(depth_weighted_loss(logits, y), expected)


def test_distillation_adds_nothing_when_exits_agree_with_the_last() -> None:
    logits = torch.randn(4, 1, 2).expand(4, 3, 2).contiguous()
    y = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(depth_weighted_loss(logits, y, distill=1.0),
                               depth_weighted_loss(logits, y, distill=0.0))
