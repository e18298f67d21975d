"""The wrapped HF classification heads equal the HF models' own heads and trace to ONNX."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from models.build.tiny import save_tiny_classifier
from models.hf_heads import HF_HEAD_KINDS, build_hf_head, head_from_classifier, hf_state_dict


@pytest.mark.parametrize("family", sorted(HF_HEAD_KINDS))
def test_head_matches_the_classifier_and_maps_back(tmp_path: Path, family: str) -> None:
    clf = AutoModelForSequenceClassification.from_pretrained(
        str(save_tiny_classifier(family, tmp_path / "c"))).eval()
    kind = HF_HEAD_KINDS[family]
    head = head_from_classifier(kind, clf).eval()
    ids = torch.randint(5, 100, (3, 9))  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        base = getattr(clf, clf.base_model_prefix)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        assert torch.equal(head(hidden, mask), clf(input_ids=ids, attention_mask=mask).logits)
    # a freshly built head of the same kind takes the weights back, key for key
    fresh = build_hf_head(kind, clf.config)
    fresh.load_state_dict(head.state_dict())
    mapped = hf_state_dict(fresh, clf.base_model_prefix)
    full = clf.state_dict()
    assert mapped and all(torch.equal(full[k], v) for k, v in mapped.items())


@pytest.mark.parametrize("kind", ["hf-bert", "hf-distilbert", "hf-roberta"])
def test_heads_trace_to_onnx(tmp_path: Path, kind: str) -> None:
    family = {v: k for k, v in HF_HEAD_KINDS.items()}[kind]
    clf = AutoModelForSequenceClassification.from_pretrained(
        str(save_tiny_classifier(family, tmp_path / "c")))
    head = build_hf_head(kind, clf.config).eval()
    hidden, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    buf = io.BytesIO()
    torch.onnx.export(head, (hidden, mask), buf, dynamo=False, input_names=["hidden", "mask"],
                      dynamic_axes={"hidden": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}})
    assert buf.getbuffer().nbytes > 0


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown classifier head 'hf-gpt2'"):
        build_hf_head("hf-gpt2", None)  # type: ignore[arg-type]
