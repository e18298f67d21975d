"""The ONNX Runtime backend: per-layer graphs equal the torch step path, batches behave alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import StepModel
from models.build.onnx_graphs import export_graphs
from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.onnx_backend import NumpyTextBatch, OnnxTextModel
from models.text_classifier import MultiExitTextClassifier, TextBatch, TextClassifierConfig

TEXTS = ["a great film", "dull and boring but the acting is not bad at all", "wonderful",
         "the plot is nothing but boilerplate and the music is awful"]
FAMILIES = ["bert", "roberta", "distilbert", "mpnet", "xlm-roberta", "electra"]


def _pair(family: str, tmp: Path) -> tuple[MultiExitTextClassifier, OnnxTextModel]:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    head = TextClassifierConfig(num_labels=3, max_length=32, dropout=0.0)
    model = MultiExitTextClassifier.from_config(
        tiny_backbone_config(family, layers=3, vocab_size=len(tok)), tok, head).eval()
    export_graphs(model_copy(model), str(tmp))  # export switches its copy to eager attention
    return model, OnnxTextModel(tmp, model.num_exits, tok, head)


def model_copy(model: MultiExitTextClassifier) -> MultiExitTextClassifier:
    clone = MultiExitTextClassifier.from_config(model.backbone.config, model.tokenizer,
                                                model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_matches_torch(family: str, tmp_path: Path) -> None:
    model, onnx = _pair(family, tmp_path)
    assert isinstance(onnx, StepModel) and isinstance(model, StepModel)
    enc = model.encode(TEXTS)
    ref, got = model.all_exit_logits(enc), onnx.all_exit_logits(enc)  # (B, L, C)
    assert got.shape == ref.shape == (4, 3, 3)
    assert torch.allclose(ref, got, atol=1e-4), (ref - got).abs().max()
    for i, text in enumerate(TEXTS):  # row alone (no padding) equals its batched row
        alone = onnx.all_exit_logits(onnx.encode([text]))
        assert torch.allclose(alone[0], got[i], atol=1e-4)


def test_filter_and_concatenate_match_the_torch_batch(tmp_path: Path) -> None:
    model, onnx = _pair("bert", tmp_path)
    enc = model.encode(TEXTS)
    tb, nb = model.embed(enc), onnx.embed(enc)
    keep = torch.tensor([True, False, True, False])
    tf, nf = tb.filter(keep), nb.filter(keep)
    assert isinstance(nf, NumpyTextBatch) and nf.layer == 0 and len(nf) == 2
    assert nf.hidden.shape == tuple(tf.hidden.shape)  # padding trimmed alike
    assert np.array_equal(nf.mask, tf.attention_mask.numpy())
    merged_t = TextBatch.concatenate([tf, tb.filter(~keep)])
    merged_n = NumpyTextBatch.concatenate([nf, nb.filter(~keep)])
    assert merged_n.hidden.shape == tuple(merged_t.hidden.shape)
    out_t, out_n = model.step(merged_t, 1), onnx.step(merged_n, 1)
    assert torch.allclose(out_t.logits, out_n.logits, atol=1e-4)
    assert out_n.batch.layer == 1
    assert onnx.advance(merged_n, 1).layer == 1


def test_concatenate_refuses_mixed_layers(tmp_path: Path) -> None:
    _, onnx = _pair("bert", tmp_path)
    b0 = onnx.embed(onnx.encode(TEXTS[:1]))
    b1 = onnx.step(b0, 1).batch
    with pytest.raises(ValueError, match="different layers"):
        NumpyTextBatch.concatenate([b0, b1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cannot run layer 3"):
        onnx.step(b0, 3)


def test_filter_accepts_numpy_and_lists(tmp_path: Path) -> None:
    _, onnx = _pair("bert", tmp_path)
    b = onnx.embed(onnx.encode(TEXTS))
    assert len(b.filter(np.array([1, 0, 0, 1], dtype=bool))) == 2
    assert len(b.filter([False, False, False, True])) == 1
    assert len(b.filter([False] * 4)) == 0
