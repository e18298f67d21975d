from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from models.build.data import DataError, tiny_sentiment
from models.build.recipes import BuildOptions, build
from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.build.training import TrainConfig, depth_weighted_loss, reproducible, with_overrides


def test_depth_weighted_loss_is_the_weighted_mean_of_exit_ces() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 3)
    y = torch.randint(0, 3, (5,))
    ces = torch.stack([F.cross_entropy(logits[:, i], y) for i in range(4)])
    expected = (torch.arange(1, 5) * ces).sum() / 10
    torch.testing.assert_close(depth_weighted_loss(logits, y), expected)


def test_depth_power_zero_weights_every_exit_alike() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 3)
    y = torch.randint(0, 3, (5,))
    ces = torch.stack([F.cross_entropy(logits[:, i], y) for i in range(4)])
    torch.testing.assert_close(depth_weighted_loss(logits, y, power=0.0), ces.mean())
    squared = (torch.arange(1, 5) ** 2 * ces).sum() / 30
    torch.testing.assert_close(depth_weighted_loss(logits, y, power=2.0), squared)


def test_distillation_adds_nothing_when_exits_agree_with_the_last() -> None:
    logits = torch.randn(4, 1, 2).expand(4, 3, 2).contiguous()
    y = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(depth_weighted_loss(logits, y, distill=1.0),
                               depth_weighted_loss(logits, y, distill=0.0))


def _weights_sha(out: Path, seed: int | None = None) -> str:
    build("tiny-text", BuildOptions(out=out, device="cpu", progress=False, seed=seed))
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_two_builds_of_one_recipe_and_seed_give_identical_weights(tmp_path: Path) -> None:
    first = _weights_sha(tmp_path / "a")
    torch.manual_seed(1234)  # whatever the caller's generator state, the build reseeds
    assert _weights_sha(tmp_path / "b") == first
    assert _weights_sha(tmp_path / "c", seed=7) != first  # the seed does reach the weights


def test_training_runs_on_the_configured_threads_and_restores_them() -> None:
    before = torch.get_num_threads()
    with reproducible(1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == before


def test_overrides_are_cast_to_the_field_type() -> None:
    cfg = with_overrides(TrainConfig(), {"distill": "0", "epochs": "3", "freeze_backbone": "true"})
    assert (cfg.distill, cfg.epochs, cfg.freeze_backbone) == (0.0, 3, True)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"distil": "0"}, "unknown training setting 'distil'"),
    ({"epochs": "many"}, "epochs='many' is not a int"),
    ({"threads": "0"}, "threads must be >= 1"),
    ({"freeze_backbone": "maybe"}, "freeze_backbone='maybe' is not a bool"),
])
def test_bad_overrides_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        with_overrides(TrainConfig(), overrides)


def test_text_base_recipe_builds_on_a_tiny_mpnet(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The 12-layer recipe's code path (MPNet: relative position bias in the step loop) on a
    tiny random MPNet saved where the recipe looks for the unpacked weights."""
    bdir = tmp_path / "mpnet"
    tok = tiny_tokenizer()
    AutoModel.from_config(tiny_backbone_config("mpnet", layers=2, vocab_size=len(tok))
                          ).save_pretrained(bdir)
    tok.save_pretrained(bdir)
    data = tiny_sentiment(200)
    csv = tmp_path / "d.csv"
    rows = [*zip(data.train.texts, data.train.labels, strict=True),
            *zip(data.val.texts, data.val.labels, strict=True),
            *zip(data.test.texts, data.test.labels, strict=True)]
    csv.write_text("text,label\n" + "".join(f"{t},{data.label_names[y]}\n" for t, y in rows))
    monkeypatch.setenv("EESERVE_MPNET_DIR", str(bdir))
    man = build("text-base", BuildOptions(out=tmp_path / "m", device="cpu", progress=False,
                                          data_file=str(csv), epochs=1))
    assert man["backbone"]["model_type"] == "mpnet" and man["recipe"]["train"]["epochs"] == 1
    assert len(man["exit_accuracy"]["test"]) == 2


def test_text_base_names_the_missing_weights(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EESERVE_MPNET_DIR", str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="text-base: no all-mpnet-base-v2 at"):
        build("text-base", BuildOptions(out=tmp_path / "m", progress=False))
