"""Classification heads of Hugging Face sequence classifiers as eeserve exit heads.

A user's fine-tuned `AutoModelForSequenceClassification` keeps its own head as the last exit.
Each wrapper holds the very modules of that head, under the attribute names the HF model uses,
and has the exit-head signature `head(hidden (B, T, H), attention_mask (B, T)) -> (B, C)`:

    hf-bert        BERT/MiniLM: pooler (dense + tanh on token 0) -> dropout -> classifier
    hf-distilbert  token 0 -> pre_classifier -> ReLU -> dropout -> classifier
    hf-roberta     RoBERTa, XLM-R, ELECTRA, MPNet: the model's `classifier` module, which reads
    hf-xlm-roberta token 0 itself (dense -> tanh/gelu -> out_proj)
    hf-electra
    hf-mpnet

The forward passes are plain tensor ops (no branches on values), so they trace to ONNX.
`HF_HEAD_KINDS` maps a model_type to its head kind; `STATE_PREFIX` says where the head's weights
live in the HF model's state dict (for `eeserve export --format hf`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.bert.modeling_bert import BertPooler
from transformers.models.electra.modeling_electra import ElectraClassificationHead
from transformers.models.mpnet.modeling_mpnet import MPNetClassificationHead
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaClassificationHead

HF_HEAD_KINDS = {"bert": "hf-bert", "distilbert": "hf-distilbert", "roberta": "hf-roberta",
                 "xlm-roberta": "hf-xlm-roberta", "electra": "hf-electra", "mpnet": "hf-mpnet"}


class BertHead(nn.Module):
    """BertForSequenceClassification's head: pooler(token 0) -> dropout -> classifier."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        p = config.classifier_dropout
        self.pooler = BertPooler(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, int(config.num_labels or 0))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pooler(hidden)  # (B, H): dense + tanh on token 0
        return self.classifier(self.dropout(pooled))  # (B, C)


class DistilBertHead(nn.Module):
    """DistilBertForSequenceClassification's head: token 0 -> pre_classifier -> ReLU -> out."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, int(config.num_labels or 0))
        self.dropout = nn.Dropout(config.seq_classif_dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pre_classifier(hidden[:, 0]))  # (B, H)
        return self.classifier(self.dropout(x))  # (B, C)


class TokenZeroHead(nn.Module):
    """RoBERTa / XLM-R / ELECTRA / MPNet: the model's own `classifier` module on token 0."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(hidden)  # (B, C): reads hidden[:, 0]


_TOKEN_ZERO = {"hf-roberta": RobertaClassificationHead,
               "hf-xlm-roberta": XLMRobertaClassificationHead,
               "hf-electra": ElectraClassificationHead, "hf-mpnet": MPNetClassificationHead}

# where the head's own weights sit in the HF model's state dict ("{base}" = base model prefix)
STATE_PREFIX = {"pooler.": "{base}.pooler.", "classifier.": "classifier.",
                "pre_classifier.": "pre_classifier."}


def build_hf_head(kind: str, config: PretrainedConfig) -> nn.Module:
    """An untrained head of `kind` for `config` (weights are loaded afterwards)."""
    if kind == "hf-bert":
        return BertHead(config)
    if kind == "hf-distilbert":
        return DistilBertHead(config)
    if kind in _TOKEN_ZERO:
        return TokenZeroHead(_TOKEN_ZERO[kind](config))
    raise ValueError(f"unknown classifier head {kind!r}; known: {sorted(HF_HEAD_KINDS.values())}")


def head_from_classifier(kind: str, clf: Any) -> nn.Module:
    """Wrap the head modules of a loaded sequence classifier (shared, not copied)."""
    if kind == "hf-bert":
        base = getattr(clf, clf.base_model_prefix)
        bert = BertHead(clf.config)
        bert.pooler, bert.dropout, bert.classifier = base.pooler, clf.dropout, clf.classifier
        return bert
    if kind == "hf-distilbert":
        distil = DistilBertHead(clf.config)
        distil.pre_classifier, distil.classifier = clf.pre_classifier, clf.classifier
        distil.dropout = clf.dropout
        return distil
    if kind in _TOKEN_ZERO:
        return TokenZeroHead(clf.classifier)
    raise ValueError(f"unknown classifier head {kind!r}; known: {sorted(HF_HEAD_KINDS.values())}")


def hf_state_dict(head: nn.Module, base_prefix: str) -> dict[str, torch.Tensor]:
    """The head's weights under the key names of the HF sequence-classification model."""
    out = {}
    for key, value in head.state_dict().items():
        for ours, theirs in STATE_PREFIX.items():
            if key.startswith(ours):
                out[theirs.format(base=base_prefix) + key[len(ours):]] = value
                break
        else:  # the token-0 heads keep `classifier.` as is; anything else is a bug
            raise KeyError(f"head weight {key!r} has no place in the HF model")
    return out
