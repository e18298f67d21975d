"""--backbone: the joint recipe on every supported encoder family (tiny random configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, GPT2Config, T5Config

from models.build.backbones import FAMILIES, check_family, local_backbone
from models.build.data import tiny_sentiment
from models.build.recipes import BuildOptions, build
from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.loading import load_text_artifact


def save_encoder(family: str, out: Path) -> Path:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    AutoModel.from_config(tiny_backbone_config(family, layers=2, vocab_size=len(tok))
                          ).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = tiny_sentiment(120)
    rows = [{"text": t, "label": ds.label_names[y]}
            for s in (ds.train, ds.val, ds.test) for t, y in zip(s.texts, s.labels, strict=True)]
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_steps_like_its_forward(tmp_path: Path, data_file: Path,
                                                        family: str) -> None:
    src = save_encoder(family, tmp_path / "enc")
    out = tmp_path / "art"
    man = build("backbone", BuildOptions(
        out=out, backbone=str(src), data_file=str(data_file), progress=False, device="cpu",
        epochs=1, overrides={"batch_size": 16, "max_length": 24, "lr": 1e-3, "head_lr": 2e-3,
                             "distill": 0.5}))
    assert man["recipe"]["name"] == "backbone" and man["backbone"]["model_type"] == family
    assert man["recipe"]["train"]["batch_size"] == 16 and man["recipe"]["train"]["distill"] == 0.5
    model = load_text_artifact(out).model
    assert model.config.max_length == 24 and model.num_exits == 2
    enc = model.encode(["the film was great", "dull and tedious plot with a bland cast"])
    with torch.no_grad():
        full = model(enc.input_ids, enc.attention_mask)  # (B, L, C)
    assert torch.allclose(model.all_exit_logits(enc), full, atol=1e-5)


@pytest.mark.parametrize("config", [GPT2Config(n_layer=2, n_embd=32, n_head=4),
                                    T5Config(num_layers=2, d_model=32, num_heads=4)])
def test_unsupported_architectures_are_refused(tmp_path: Path, config: object) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(config.to_json_string())  # type: ignore[attr-defined]
    with pytest.raises(ValueError) as err:
        build("backbone", BuildOptions(out=tmp_path / "o", backbone=str(d)))
    msg = str(err.value)
    assert "unsupported architecture" in msg and "\n" not in msg
    assert all(name in msg for name in FAMILIES.values())


def test_check_family_and_local_backbone_errors(tmp_path: Path) -> None:
    check_family("electra", "x")
    with pytest.raises(ValueError, match="'albert'"):
        check_family("albert", "x")
    with pytest.raises(ValueError, match="is no directory and is not a known backbone"):
        local_backbone(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="has no config.json"):
        local_backbone(str(tmp_path))


def test_mpnet_artifact_with_the_old_unused_pooler_still_loads(tmp_path: Path,
                                                               data_file: Path) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "art"
    build("backbone", BuildOptions(out=out, backbone=str(save_encoder("mpnet", tmp_path / "e")),
                                   data_file=str(data_file), progress=False, device="cpu",
                                   epochs=1, overrides={"max_length": 24}))
    state = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("backbone.pooler.") for k in state)
    state["backbone.pooler.dense.weight"] = torch.zeros(32, 32)  # as saved before this change
    save_file(state, str(out / "model.safetensors"))
    assert load_text_artifact(out, verify=False).model.num_exits == 2


def test_val_fraction_is_refused_where_it_cannot_apply(tmp_path: Path, data_file: Path) -> None:
    """`--set val_fraction=F` resizes the movie reviews' validation split; a user's --data file
    and the generated tiny data keep their own split, and say so instead of ignoring it."""
    enc = str(save_encoder("bert", tmp_path / "e"))
    with pytest.raises(ValueError, match="--data FILE keeps its own split"):
        build("backbone", BuildOptions(out=tmp_path / "a", backbone=enc, data_file=str(data_file),
                                       progress=False, overrides={"val_fraction": 0.2}))
    with pytest.raises(ValueError, match="movie reviews only, not to tiny-sentiment"):
        build("tiny-text", BuildOptions(out=tmp_path / "b", progress=False,
                                        overrides={"val_fraction": 0.2}))
