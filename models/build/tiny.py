"""Tiny random-initialised models for tests: no downloads, built from transformers configs.

`tiny_tokenizer()` is a real WordPiece tokenizer (the `tokenizers` library) over a small vocab;
`tiny_backbone_config(family)` gives 2-4 layer, hidden-32 encoders of each supported family.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

from models.build.data import tiny_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer(extra_words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer: specials, the tiny vocab, letters and ##letters."""
    words = sorted(set(tiny_vocab() + (extra_words or [])))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = SPECIALS + words + [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


def tiny_backbone_config(family: str = "bert", layers: int = 3, vocab_size: int = 256,
                         hidden: int = 32) -> PretrainedConfig:
    """A random-init encoder config of a supported family (see models.build.backbones.FAMILIES)."""
    common: dict[str, Any] = {"vocab_size": vocab_size, "max_position_embeddings": 72}
    if family == "bert":
        return BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                          intermediate_size=4 * hidden, **common)
    if family == "xlm-roberta":
        return XLMRobertaConfig(hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=4, intermediate_size=4 * hidden,
                                pad_token_id=0, **common)
    if family == "electra":  # embedding size below hidden: exercises `embeddings_project`
        return ElectraConfig(embedding_size=hidden // 2, hidden_size=hidden,
                             num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=4 * hidden, pad_token_id=0, **common)
    if family == "roberta":
        return RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             intermediate_size=4 * hidden, pad_token_id=0, **common)
    if family == "mpnet":
        return MPNetConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=4 * hidden, pad_token_id=0, **common)
    if family == "distilbert":
        return DistilBertConfig(dim=hidden, n_layers=layers, n_heads=4, hidden_dim=4 * hidden,
                                pad_token_id=0, **common)
    raise ValueError(f"unknown tiny family {family!r}; use bert, distilbert, electra, mpnet, "
                     "roberta or xlm-roberta")


def save_tiny_classifier(family: str, out: Path, layers: int = 3, seed: int = 0,
                         labels: tuple[str, ...] = ("negative", "positive")) -> Path:
    """A random tiny `AutoModelForSequenceClassification` + tokenizer saved as a standard dir.

    Its classification head is drawn with std 1 so its logits are O(1) (a fresh HF head gives
    logits near 0, which would make exact-match checks meaningless)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = tiny_backbone_config(family, layers=layers, vocab_size=len(tok))
    cfg.num_labels = len(labels)
    cfg.id2label = dict(enumerate(labels))
    cfg.label2id = {n: i for i, n in enumerate(labels)}
    clf = AutoModelForSequenceClassification.from_config(cfg)
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if name.startswith(("classifier", "pre_classifier")) or ".pooler." in name:
                p.normal_(0.0, 1.0)
    clf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
