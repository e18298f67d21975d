from __future__ import annotations

import pytest
import torch

from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.text_classifier import MultiExitTextClassifier, TextBatch, TextClassifierConfig

TEXTS = ["the movie was great", "dull boring and stale plot with the cast and the music", "a"]


def _model(family: str, layers: int = 3) -> MultiExitTextClassifier:
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    cfg = tiny_backbone_config(family, layers=layers, vocab_size=len(tok))
    return MultiExitTextClassifier.from_config(cfg, tok, TextClassifierConfig(num_labels=3)).eval()


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "roberta"])
def test_step_loop_matches_backbone_forward(family: str) -> None:
    m = _model(family)
    enc = m.encode(TEXTS)
    with torch.no_grad():
        full = m(enc.input_ids, enc.attention_mask)  # backbone's own forward, all hidden states
    stepped = m.all_exit_logits(enc)
    assert stepped.shape == (3, m.num_exits, 3)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


def test_filter_drops_rows_trims_padding_and_keeps_results() -> None:
    m = _model("bert")
    enc = m.encode(TEXTS)
    ref = m.all_exit_logits(enc)
    batch = m.step(m.embed(enc), 1).batch
    assert isinstance(batch, TextBatch)
    kept = batch.filter(torch.tensor([True, False, True]))  # the long text leaves
    assert len(kept) == 2
    assert kept.hidden.shape[1] == max(enc.lengths[0], enc.lengths[2])  # padding trimmed
    out = m.step(kept, 2)
    torch.testing.assert_close(out.logits, ref[[0, 2], 1], atol=1e-5, rtol=0)


def test_concatenate_pads_and_matches_separate_runs() -> None:
    m = _model("bert")
    a, b = m.embed(m.encode(TEXTS[:1])), m.embed(m.encode(TEXTS[1:]))
    merged = TextBatch.concatenate([a, b])
    assert len(merged) == 3
    out = m.step(merged, 1).logits
    sep = torch.cat([m.step(a, 1).logits, m.step(b, 1).logits])
    torch.testing.assert_close(out, sep, atol=1e-5, rtol=0)


def test_concatenate_refuses_mixed_layers() -> None:
    m = _model("bert")
    a = m.embed(m.encode(TEXTS[:1]))
    b = m.step(m.embed(m.encode(TEXTS[1:2])), 1).batch
    with pytest.raises(ValueError, match="different layers"):
        TextBatch.concatenate([a, b])  # type: ignore[list-item]


def test_step_out_of_order_is_refused() -> None:
    m = _model("bert")
    with pytest.raises(ValueError, match="cannot run layer 2"):
        m.step(m.embed(m.encode(TEXTS)), 2)


def test_encode_reports_truncation() -> None:
    m = _model("bert")
    enc = m.encode(["great " * 100, "great"], max_length=16)
    assert enc.truncated == [True, False]
    assert enc.input_ids.shape[1] == 16


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_encode_matches_tokenizer_truncation_and_flags_cut_texts(family: str) -> None:
    tok = tiny_tokenizer()
    m = MultiExitTextClassifier.from_config(
        tiny_backbone_config(family, vocab_size=len(tok)), tok,
        TextClassifierConfig(num_labels=2, max_length=8))
    texts = ["a", "the movie was great and fun to watch", "one two three four five six", "x y"]
    enc = m.encode(texts)
    ref = tok(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
    assert torch.equal(enc.input_ids, ref["input_ids"])
    assert torch.equal(enc.attention_mask, ref["attention_mask"])
    full = [len(ids) for ids in tok(texts)["input_ids"]]
    assert enc.truncated == [n > 8 for n in full] and any(enc.truncated)
    assert enc.lengths == ref["attention_mask"].sum(1).tolist()
